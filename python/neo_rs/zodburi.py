"""A zodburi resolver:
neo://CLUSTER@HOST:PORT[,HOST:PORT...]?read_only=1&cache_size=N&spin_us=N&storage_timeout=S&blob_dir=PATH
neos://CLUSTER@HOST:PORT[,...]?ca=PATH&cert=PATH&key=PATH[&...]: the same, over mutual TLS"""

from urllib.parse import parse_qsl, urlsplit, unquote


def resolve_uri(uri):
    from .storage import Storage

    parts = urlsplit(uri)
    if parts.scheme not in ("neo", "neos"):
        raise ValueError("not a neo:// or neos:// URI: %r" % uri)
    name, at, masters = parts.netloc.rpartition("@")
    if not at or not name or not masters:
        raise ValueError("neo:// URIs name the cluster and its masters: neo://CLUSTER@HOST:PORT")
    options = dict(parse_qsl(parts.query))
    kwargs = {
        "master_nodes": masters.replace(",", " "),
        "name": unquote(name),
        "read_only": options.pop("read_only", "0").lower() in ("1", "true", "yes", "on"),
    }
    for key in ("cache_size", "spin_us"):
        if key in options:
            kwargs[key] = int(options.pop(key))
    if "storage_timeout" in options:
        kwargs["storage_timeout"] = float(options.pop("storage_timeout"))
    if "blob_dir" in options:
        kwargs["blob_dir"] = options.pop("blob_dir")
    tls = [key for key in ("ca", "cert", "key") if key in options]
    if parts.scheme == "neos":
        missing = [key for key in ("ca", "cert", "key") if key not in tls]
        if missing:
            raise ValueError("neos:// URIs give the TLS files: %s missing" % ", ".join(missing))
        for key in tls:
            kwargs[key] = options.pop(key)
    elif tls:
        raise ValueError("TLS files (%s) go with a neos:// URI, not neo://" % ", ".join(tls))
    dbkw = {}
    for key in list(options):
        if key.startswith("database_"):
            dbkw[key[len("database_"):]] = options.pop(key)
    if options:
        raise ValueError("unknown neo:// options: %s" % ", ".join(sorted(options)))
    return (lambda: Storage(**kwargs)), dbkw
