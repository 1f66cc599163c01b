"""kmock's Kubernetes emulator as its own process, counting what the operator asks of it.

`python -m benchmarks.emulator --port PORT` serves the API on 127.0.0.1:PORT until SIGTERM.
`GET /_bench/stats` answers, as JSON: requests by client (`operator` = kopf's or slimserve's User-Agent, else
`bench`) and by `verb resource[/subresource]`, watch events sent to the operator by resource,
the open watch streams, creates refused by resource (409s), and the wall-clock time (`time.time()`, comparable across processes on
one machine) of each CompressedModel's and each Job's first create. `?times=0` leaves the times out.

Two costs of the test double are kept out of the measurement, because a real API server has
neither (evidence in benchmarks/README.md, "Operator benchmark"; `--plain` keeps both, to measure them):
- kmock matches each request against its whole request log (`request in view` walks the log), so a
  request costs O(requests so far): the log is cut to the current request, and the fallback
  reactions' own request lists are emptied as they grow;
- kmock finds an object by scanning every stored object, so a GET costs O(objects): a request that
  names its object is answered from the object table by key.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import time
from typing import Any

import aiohttp.web
import kmock

from slimserve.operator.kube import USER_AGENT
from tests.kube.emulator import ClusterEmulator

CR = "slimserve.dev/v1alpha1/compressedmodels"
PEERING = "kopf.dev/v1/kopfpeerings"
STATS_PATH = "/_bench/stats"
OPERATOR_AGENTS = ("kopf/", USER_AGENT)  # kopf's watches and its own patches; slimserve's API client


class CountingEmulator(ClusterEmulator):
    """The tests' emulator plus counters, a bounded request log and keyed object lookup."""

    request_history: int | None = 1  # the request being served; kmock needs nothing older
    keyed_lookup = True

    requests: collections.Counter[tuple[str, str]]
    watch_events: collections.Counter[str]
    watches_open: int
    created: dict[str, dict[str, float]]
    refused: collections.Counter[str]

    def start_counting(self) -> None:
        self.requests = collections.Counter()
        self.watch_events = collections.Counter()
        self.watches_open = 0
        self.created = {"compressedmodels": {}, "jobs": {}}
        self.refused = collections.Counter()  # creates answered >= 300 (a 409: the object exists)

    async def _handle(self, request: Any) -> Any:
        if request.resource is None and request.url.path == STATS_PATH:
            return aiohttp.web.json_response(self.stats(times=request.params.get("times") != "0"))
        agent = "operator" if str(request.headers.get("User-Agent", "")).startswith(OPERATOR_AGENTS) else "bench"
        if request.resource is not None:
            what = f"{request.action.value if request.action else request.method} {request.resource.plural}"
            self.requests[agent, what + (f"/{request.subresource}" if request.subresource else "")] += 1
        if self.keyed_lookup and request.id % 1000 == 0:  # the fallback reactions keep every request they served
            for payload in self._payloads:
                payload._requests.clear()  # noqa: SLF001
        response = await super()._handle(request)
        if request.resource is not None and request.action == kmock.action.CREATE and response.status >= 300:
            self.refused[request.resource.plural] += 1
        elif request.resource is not None and request.action == kmock.action.CREATE:
            seen = self.created.get(request.resource.plural)
            meta = (request.data or {}).get("metadata") or {}
            key = f"{request.namespace or meta.get('namespace')}/{meta.get('name')}"
            if seen is not None and key not in seen:
                seen[key] = time.time()
        return response

    async def _serve_watch(self, request: Any) -> Any:
        operator = str(request.headers.get("User-Agent", "")).startswith(OPERATOR_AGENTS)
        self.watches_open += 1
        try:
            async for event in super()._serve_watch(request):
                if operator and isinstance(event, dict) and request.resource is not None:
                    self.watch_events[request.resource.plural] += 1
                yield event
        finally:
            self.watches_open -= 1

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:  # noqa: N802
        """By key when the request names its object (kmock scans every object for every request)."""
        if self.keyed_lookup and request.name is not None and request.namespace is not None:
            try:
                obj = self._objects._objects.get((request.resource, request.namespace, request.name))  # noqa: SLF001
            except TypeError:  # an unhashable resource pattern: let kmock decide
                obj = None
            else:
                return [obj] if obj is not None else []
        return super()._KubernetesEmulator__get_objs(request, strict)  # type: ignore[misc]

    def stats(self, times: bool = True) -> dict[str, Any]:
        by_agent: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for (agent, what), n in sorted(self.requests.items()):
            by_agent[agent][what] = n
        out: dict[str, Any] = {
            "requests": by_agent,
            "watch_events": dict(self.watch_events),
            "watches_open": self.watches_open,
            "counts": {plural: len(seen) for plural, seen in self.created.items()},
            "refused_creates": dict(self.refused),
        }
        if times:
            out["created"] = self.created
        return out


async def serve(port: int, plain: bool = False) -> None:
    if plain:
        CountingEmulator.request_history, CountingEmulator.keyed_lookup = None, False
    async with CountingEmulator() as emulator, kmock.Server(emulator, port=port):
        emulator.start_counting()
        emulator.resources.load_bundled()
        emulator.resources[CR] = {"kind": "CompressedModel", "singular": "compressedmodel", "namespaced": True,
                                  "verbs": ["list", "watch", "get", "create", "patch", "delete"],
                                  "subresources": ["status"]}  # fmt: skip
        # kopf's peering objects, for operators run with --peering (status written through the main resource).
        emulator.resources[PEERING] = {"kind": "KopfPeering", "singular": "kopfpeering", "namespaced": True,
                                       "verbs": ["list", "watch", "get", "create", "patch", "delete"]}  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"serving on {emulator.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plain", action="store_true", help="kmock as it comes: whole request log, scans")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.plain))


if __name__ == "__main__":
    main()
