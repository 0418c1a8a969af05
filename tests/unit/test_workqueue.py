import asyncio

from openelb.kube.workqueue import WorkQueue


def test_keys_are_deduplicated_and_never_processed_concurrently() -> None:
    async def scenario() -> list[str]:
        q = WorkQueue()
        q.add("a")
        q.add("a")
        q.add("b")
        assert len(q) == 2
        first = await q.get()
        q.add(first)  # added while processing: must come back after done, not now
        second = await q.get()
        assert {first, second} == {"a", "b"}
        assert len(q) == 0
        q.done(second)
        q.done(first)
        third = await asyncio.wait_for(q.get(), 1)
        q.done(third)
        return [first, second, third]

    order = asyncio.run(scenario())
    assert order[2] == order[0]


def test_add_after_delays_the_key() -> None:
    async def scenario() -> float:
        q = WorkQueue()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        q.add_after("k", 0.1)
        assert len(q) == 0
        assert await asyncio.wait_for(q.get(), 2) == "k"
        return loop.time() - t0

    assert asyncio.run(scenario()) >= 0.09
