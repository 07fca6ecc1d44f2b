"""One client's bad requests never make another client's good requests fail through
the router (they share the router's pooled backend connections)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from rollout.demo.models import iris_request
from tests.protocol.conftest import Stack

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(180)]

BAD: list[tuple[dict[str, str], bytes]] = [
    ({"Content-Type": "application/json"}, b'{"inputs": [{"name": '),  # truncated JSON
    ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, b"not gzip at all"),
    ({"Content-Type": "application/xml"}, b"<inputs/>"),
    ({}, b"\x00\xff" * 5000),
    ({"Content-Type": "application/json"}, b'{"inputs": [{"name": "x", "shape": [9, 4], "datatype": "FP64", "data": [1]}]}'),
]


async def mixed_load(url: str, good_n: int = 200) -> tuple[list[int], list[int]]:
    """``good_n`` good requests from 8 workers while 4 workers send bad ones."""
    infer = url + "/v2/models/iris/infer"
    good: list[int] = []
    bad: list[int] = []
    done = asyncio.Event()

    async def good_worker(session: aiohttp.ClientSession, n: int) -> None:
        for _ in range(n):
            async with session.post(infer, json=iris_request()) as resp:
                await resp.read()
                good.append(resp.status)

    async def bad_worker(session: aiohttp.ClientSession, offset: int) -> None:
        i = offset
        while not done.is_set():
            headers, body = BAD[i % len(BAD)]
            try:
                async with session.post(infer, data=body, headers=headers) as resp:
                    await resp.read()
                    bad.append(resp.status)
            except aiohttp.ClientError:
                bad.append(0)
            i += 1

    async with aiohttp.ClientSession() as good_session, aiohttp.ClientSession(
            skip_auto_headers=("Content-Type",)) as bad_session:
        bad_tasks = [asyncio.create_task(bad_worker(bad_session, k)) for k in range(4)]
        await asyncio.gather(*(good_worker(good_session, good_n // 8) for _ in range(8)))
        done.set()
        await asyncio.gather(*bad_tasks)
    return good, bad


def test_bad_requests_of_one_client_do_not_fail_good_requests_of_others(stack: Stack) -> None:
    stack.configure()
    direct_good, direct_bad = asyncio.run(mixed_load(stack.v1.url))
    routed_good, routed_bad = asyncio.run(mixed_load(stack.router.url))

    assert direct_good == [200] * 200  # the premise: directly, nothing fails
    assert routed_good == [200] * 200
    assert routed_bad and all(400 <= code < 600 for code in routed_bad)  # the bad ones did reach a server
