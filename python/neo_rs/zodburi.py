"""A zodburi resolver:
neo://CLUSTER@HOST:PORT[,HOST:PORT...]?read_only=1&cache_size=N&spin_us=N&storage_timeout=S&blob_dir=PATH"""

from urllib.parse import parse_qsl, urlsplit, unquote


def resolve_uri(uri):
    from .storage import Storage

    parts = urlsplit(uri)
    if parts.scheme != "neo":
        raise ValueError("not a neo:// URI: %r" % uri)
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
    dbkw = {}
    for key in list(options):
        if key.startswith("database_"):
            dbkw[key[len("database_"):]] = options.pop(key)
    if options:
        raise ValueError("unknown neo:// options: %s" % ", ".join(sorted(options)))
    return (lambda: Storage(**kwargs)), dbkw
