//! Field encoding: how every value of a message body is laid out, and the `Field` trait that
//! the message catalogue is built from.
//!
//! All integers are little-endian. Variable-size values carry a `u32` length or count first,
//! and every such length is checked against `limits` and against the bytes actually left in
//! the body before anything is sliced or allocated. Decoding borrows: `Bytes`, `Text` and
//! `Payload` fields are views into the receive buffer, never copies.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::limits;

/// A cursor over one frame's body, with the frame's payload to hand to the one field that
/// takes it.
#[derive(Debug)]
pub struct Reader<'a> {
    body: &'a Bytes,
    position: usize,
    payload: Option<Bytes>,
}

impl<'a> Reader<'a> {
    pub fn new(body: &'a Bytes, payload: Bytes) -> Reader<'a> {
        Reader { body, position: 0, payload: Some(payload) }
    }

    /// Bytes of the body not read yet.
    pub fn remaining(&self) -> usize {
        self.body.len() - self.position
    }

    /// Takes the next `size` bytes as a slice of the body.
    #[inline]
    pub fn take(&mut self, size: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if size > available {
            return Err(DecodeError::Truncated { needed: size, available });
        }
        let start = self.position;
        self.position += size;
        let body: &'a Bytes = self.body;
        Ok(&body[start..start + size])
    }

    /// Takes the next `size` bytes as a zero-copy view of the receive buffer.
    #[inline]
    pub fn take_bytes(&mut self, size: usize) -> Result<Bytes, DecodeError> {
        let available = self.remaining();
        if size > available {
            return Err(DecodeError::Truncated { needed: size, available });
        }
        let start = self.position;
        self.position += size;
        Ok(self.body.slice(start..start + size))
    }

    #[inline]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// Hands the frame's payload to the field that carries it; a second call gets an empty one.
    pub fn take_payload(&mut self) -> Bytes {
        self.payload.take().unwrap_or_default()
    }

    /// Checks that the body was read to its end and the payload was claimed (or empty).
    pub fn finish(self) -> Result<(), DecodeError> {
        let extra = self.remaining();
        if extra != 0 {
            return Err(DecodeError::TrailingBytes { extra });
        }
        match self.payload {
            Some(payload) if !payload.is_empty() => {
                Err(DecodeError::UnexpectedPayload { size: payload.len() })
            }
            _ => Ok(()),
        }
    }
}

/// One value of a message body.
pub trait Field: Sized {
    /// How the value is written, as docs/protocol.md shows it.
    const WIRE: &'static str;
    /// The fewest bytes an encoded value takes. A list of `n` values needs at least
    /// `n * SIZE_MIN` bytes, which bounds what a count from the wire may allocate.
    const SIZE_MIN: usize;
    /// `Some(n)` when every value takes exactly `n` bytes.
    const SIZE_FIXED: Option<usize>;
    /// Whether this is the `Payload` type (object data outside the body).
    const IS_PAYLOAD: bool = false;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError>;
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The frame payload this value carries, if it is the message's `Payload` field.
    fn payload(&self) -> Option<&Bytes> {
        None
    }

    /// A value made from unstructured bytes, for property tests and fuzzing.
    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self>;
}

macro_rules! integer_field {
    ($($ty:ty => $wire:literal, $put:ident;)*) => {$(
        impl Field for $ty {
            const WIRE: &'static str = $wire;
            const SIZE_MIN: usize = size_of::<$ty>();
            const SIZE_FIXED: Option<usize> = Some(size_of::<$ty>());

            #[inline]
            fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
                out.$put(*self);
                Ok(())
            }

            #[inline]
            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(<$ty>::from_le_bytes(reader.array()?))
            }

            #[cfg(any(test, feature = "arbitrary"))]
            fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
                <$ty as arbitrary::Arbitrary>::arbitrary(u)
            }
        }
    )*};
}

integer_field! {
    u8 => "u8", put_u8;
    u16 => "u16", put_u16_le;
    u32 => "u32", put_u32_le;
    u64 => "u64", put_u64_le;
}

impl Field for bool {
    const WIRE: &'static str = "bool (u8 0 or 1)";
    const SIZE_MIN: usize = 1;
    const SIZE_FIXED: Option<usize> = Some(1);

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(u8::from(*self));
        Ok(())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(reader)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadValue { what: "bool", value: u64::from(value) }),
        }
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        <bool as arbitrary::Arbitrary>::arbitrary(u)
    }
}

/// `Option<T>`: a tag byte, 0 for none or 1 followed by the value.
impl<T: Field> Field for Option<T> {
    const WIRE: &'static str = "option: u8 tag 0, or 1 + value";
    const SIZE_MIN: usize = 1;
    const SIZE_FIXED: Option<usize> = None;

    #[inline]
    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            None => {
                out.put_u8(0);
                Ok(())
            }
            Some(value) => {
                out.put_u8(1);
                value.encode(out)
            }
        }
    }

    #[inline]
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(reader)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(reader)?)),
            value => Err(DecodeError::BadValue { what: "option tag", value: u64::from(value) }),
        }
    }

    fn payload(&self) -> Option<&Bytes> {
        self.as_ref().and_then(Field::payload)
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        if <bool as arbitrary::Arbitrary>::arbitrary(u)? {
            Ok(Some(T::arbitrary(u)?))
        } else {
            Ok(None)
        }
    }
}

/// Writes a `u32` length or count, refusing values the receiver would refuse.
fn encode_length(
    out: &mut BytesMut,
    what: &'static str,
    size: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if size > max {
        return Err(EncodeError::TooLarge { what, size, max });
    }
    out.put_u32_le(size as u32);
    Ok(())
}

/// Reads a `u32` length and checks it against `max` and against the body left.
#[inline]
fn decode_length(
    reader: &mut Reader<'_>,
    what: &'static str,
    max: usize,
) -> Result<usize, DecodeError> {
    let size = u32::decode(reader)? as usize;
    if size > max {
        return Err(DecodeError::TooLarge { what, size, max });
    }
    Ok(size)
}

/// `Vec<T>`: a `u32` count, then the elements.
impl<T: Field> Field for Vec<T> {
    const WIRE: &'static str = "list: u32 count + elements";
    const SIZE_MIN: usize = 4;
    const SIZE_FIXED: Option<usize> = None;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        if self.len() > limits::LIST_LENGTH_MAX {
            return Err(EncodeError::TooLarge {
                what: "list (elements)",
                size: self.len(),
                max: limits::LIST_LENGTH_MAX,
            });
        }
        out.put_u32_le(self.len() as u32);
        for element in self {
            element.encode(out)?;
        }
        Ok(())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let length = u32::decode(reader)? as usize;
        if length > limits::LIST_LENGTH_MAX {
            return Err(DecodeError::ListTooLong { length, max: limits::LIST_LENGTH_MAX });
        }
        // Every element takes at least SIZE_MIN bytes, so a count that the rest of the body
        // cannot hold is refused before the vector is allocated.
        let needed = length.saturating_mul(T::SIZE_MIN.max(1));
        let available = reader.remaining();
        if needed > available {
            return Err(DecodeError::Truncated { needed, available });
        }
        let mut elements = Vec::with_capacity(length);
        for _ in 0..length {
            elements.push(T::decode(reader)?);
        }
        Ok(elements)
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        let length = u.int_in_range(0..=6)?;
        (0..length).map(|_| T::arbitrary(u)).collect()
    }
}

/// Opaque bytes in the body: a `u32` length, then the bytes. Decoded as a view.
impl Field for Bytes {
    const WIRE: &'static str = "bytes: u32 length + bytes";
    const SIZE_MIN: usize = 4;
    const SIZE_FIXED: Option<usize> = None;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        encode_length(out, "bytes field", self.len(), limits::BYTES_SIZE_MAX)?;
        out.put_slice(self);
        Ok(())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = decode_length(reader, "bytes field", limits::BYTES_SIZE_MAX)?;
        reader.take_bytes(size)
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        let size = u.int_in_range(0..=40)?;
        Ok(Bytes::copy_from_slice(u.bytes(size)?))
    }
}

/// UTF-8 text, held as a view of the receive buffer (checked once, at decode).
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    /// Text from a static string, without allocating.
    pub const fn from_static(text: &'static str) -> Text {
        Text(Bytes::from_static(text.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks or guarantees UTF-8 (`From<String>`, `From<&str>`,
        // `from_static`, and `decode`, which runs `str::from_utf8` on the bytes).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(Bytes::from(text.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Field for Text {
    const WIRE: &'static str = "text: u32 length + UTF-8 bytes";
    const SIZE_MIN: usize = 4;
    const SIZE_FIXED: Option<usize> = None;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        encode_length(out, "text field", self.len(), limits::TEXT_SIZE_MAX)?;
        out.put_slice(&self.0);
        Ok(())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = decode_length(reader, "text field", limits::TEXT_SIZE_MAX)?;
        let bytes = reader.take_bytes(size)?;
        if std::str::from_utf8(&bytes).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(Text(bytes))
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        let size = u.int_in_range(0..=12)?;
        let text: String = (0..size)
            .map(|_| u.choose(&['a', 'z', '0', '.', '-', 'é', '日']).copied())
            .collect::<arbitrary::Result<_>>()?;
        Ok(Text::from(text))
    }
}

/// Object data carried in the frame's payload, after the body, outside the body checksum.
///
/// Each message that has one also carries the data's own checksum, checked end to end by
/// the storage (on store) and the client (on load); see docs/protocol.md.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Bytes);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl Field for Payload {
    const WIRE: &'static str = "frame payload (not in the body)";
    const SIZE_MIN: usize = 0;
    const SIZE_FIXED: Option<usize> = Some(0);
    const IS_PAYLOAD: bool = true;

    fn encode(&self, _out: &mut BytesMut) -> Result<(), EncodeError> {
        // Written by the frame encoder after the body, as its own buffer.
        Ok(())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Payload(reader.take_payload()))
    }

    fn payload(&self) -> Option<&Bytes> {
        Some(&self.0)
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        let size = u.int_in_range(0..=300)?;
        Ok(Payload(Bytes::copy_from_slice(u.bytes(size)?)))
    }
}

/// Object data inside a body (the log store's records), where it is not a frame's
/// payload: a `u32` length and the bytes, up to the payload limit
/// (`limits::PAYLOAD_SIZE_MAX`), where other `Bytes` fields stop at `BYTES_SIZE_MAX`: an
/// object the protocol carries fits the records that keep it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ObjectData(pub Bytes);

impl std::fmt::Debug for ObjectData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectData({} bytes)", self.0.len())
    }
}

impl Field for ObjectData {
    const WIRE: &'static str = "object data: u32 length + bytes (at most PAYLOAD_SIZE_MAX)";
    const SIZE_MIN: usize = 4;
    const SIZE_FIXED: Option<usize> = None;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        encode_length(out, "object data", self.0.len(), limits::PAYLOAD_SIZE_MAX)?;
        out.put_slice(&self.0);
        Ok(())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = decode_length(reader, "object data", limits::PAYLOAD_SIZE_MAX)?;
        reader.take_bytes(size).map(ObjectData)
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        let size = u.int_in_range(0..=300)?;
        Ok(ObjectData(Bytes::copy_from_slice(u.bytes(size)?)))
    }
}

/// The `arbitrary` method of a `Field` impl, present exactly when the trait has it (decided
/// when `wire` is compiled, so that other crates' `wire_struct!` types always match the trait).
#[cfg(any(test, feature = "arbitrary"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __field_arbitrary {
    ($u:ident => $body:expr) => {
        fn arbitrary(
            $u: &mut $crate::arbitrary::Unstructured<'_>,
        ) -> $crate::arbitrary::Result<Self> {
            $body
        }
    };
}

#[cfg(not(any(test, feature = "arbitrary")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __field_arbitrary {
    ($u:ident => $body:expr) => {};
}

/// Declares a composite type of a message body (or of a record body in another crate): its
/// fields in order, no tag, no padding.
#[macro_export]
macro_rules! wire_struct {
    ($(
        $(#[doc = $doc:literal])*
        pub struct $name:ident { $( $(#[doc = $fdoc:literal])* pub $field:ident : $ty:ty ),* $(,)? }
    )*) => {$(
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name { $( $(#[doc = $fdoc])* pub $field: $ty ),* }

        impl $crate::codec::Field for $name {
            const WIRE: &'static str = stringify!($name);
            const SIZE_MIN: usize = 0 $( + <$ty as $crate::codec::Field>::SIZE_MIN )*;
            const SIZE_FIXED: Option<usize> = None;

            fn encode(&self, out: &mut $crate::BytesMut) -> Result<(), $crate::error::EncodeError> {
                $( $crate::codec::Field::encode(&self.$field, out)?; )*
                Ok(())
            }

            fn decode(reader: &mut $crate::codec::Reader<'_>) -> Result<Self, $crate::error::DecodeError> {
                Ok($name { $(
                    $field: <$ty as $crate::codec::Field>::decode(reader)
                        .map_err(|e| e.in_field(stringify!($name), stringify!($field)))?,
                )* })
            }

            $crate::__field_arbitrary!(u => Ok($name { $( $field: <$ty as $crate::codec::Field>::arbitrary(u)?, )* }));
        }

        impl $crate::codec::Described for $name {
            const DOC: &'static str = concat!($($doc, "\n"),*);
            const FIELDS: &'static [$crate::codec::FieldMeta] = &[$(
                $crate::codec::FieldMeta {
                    name: stringify!($field),
                    ty: stringify!($ty),
                    wire: <$ty as $crate::codec::Field>::WIRE,
                    size_fixed: <$ty as $crate::codec::Field>::SIZE_FIXED,
                    doc: concat!($($fdoc),*),
                },
            )*];
        }
    )*};
}

/// What docs/protocol.md needs to know about one field.
#[derive(Debug, Clone, Copy)]
pub struct FieldMeta {
    pub name: &'static str,
    /// The Rust type, as written in the catalogue.
    pub ty: &'static str,
    /// How the type is laid out.
    pub wire: &'static str,
    pub size_fixed: Option<usize>,
    pub doc: &'static str,
}

/// A composite type or message that can describe its own fields.
pub trait Described {
    const DOC: &'static str;
    const FIELDS: &'static [FieldMeta];
}
