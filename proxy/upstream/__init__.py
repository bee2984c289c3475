"""A lean HTTP/1.1 client for the upstream app: pooled keep-alive connections, llhttp parsing."""

from proxy.upstream.client import RequestBody, UpstreamClient
from proxy.upstream.response import UpstreamResponse

__all__ = ["RequestBody", "UpstreamClient", "UpstreamResponse"]
