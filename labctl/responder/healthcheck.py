"""kube-proxy's service health check answer (pkg/proxy/healthcheck), as its HTTP
server writes it: what a cloud load balancer asks every node on a LoadBalancer
service's healthCheckNodePort, to skip the nodes without a local endpoint.
Standard library only: the responder imports it."""

from __future__ import annotations

import json


def response(namespace: str, name: str, local_endpoints: int, proxy_healthy: bool = True) -> bytes:
    """200 when the node has ready local endpoints (and its proxy is healthy), else 503;
    the JSON body and headers of kube-proxy's handler."""
    ok = local_endpoints > 0 and proxy_healthy
    body = (
        "{\n"
        '\t"service": {\n'
        f'\t\t"namespace": {json.dumps(namespace)},\n'
        f'\t\t"name": {json.dumps(name)}\n'
        "\t},\n"
        f'\t"localEndpoints": {local_endpoints},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}"
    ).encode()
    head = (
        f"HTTP/1.1 {'200 OK' if ok else '503 Service Unavailable'}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"X-Load-Balancing-Endpoint-Weight: {local_endpoints}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body
