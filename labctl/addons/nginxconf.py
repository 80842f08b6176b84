"""What the ingress controller's and the Gateway's nginx.conf share (pure): the
temp paths under the pod's runtime directory, the proxy defaults and headers,
and the SNI-chosen certificate (one setting for every server, mapped from
$ssl_server_name at the handshake: a certificate per server would be loaded by
every reload, 0.8 ms each)."""

from __future__ import annotations


def proxy_defaults(runtime_dir: str, headers) -> list[str]:
    """Inside `http {`: temp paths, HTTP/1.1 to upstreams, retry on error, the headers."""
    out = [f"    {what}_temp_path {runtime_dir}/{what};" for what in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    out += ["    proxy_http_version 1.1;", "    proxy_next_upstream error timeout;"]
    return out + [f"    proxy_set_header {name} {value};" for name, value in headers]


def sni_certificates(prefix: str, hosts: dict[str, tuple[str, str]], default: tuple[str, str] | None) -> list[str]:
    """$<prefix>_certificate and $<prefix>_certificate_key by SNI host name (nginx's
    `hostnames` matching, so wildcards work), and the ssl_certificate lines using them."""
    out = []
    for var, i in ((f"{prefix}_certificate", 0), (f"{prefix}_certificate_key", 1)):
        out += [f"    map $ssl_server_name ${var} {{", "        hostnames;"]
        if default:
            out.append(f"        default {default[i]};")
        out += [f"        {host} {files[i]};" for host, files in sorted(hosts.items())]
        out.append("    }")
    return out + [f"    ssl_certificate ${prefix}_certificate;", f"    ssl_certificate_key ${prefix}_certificate_key;"]
