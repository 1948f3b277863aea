"""run_in_thread hands results and exceptions back to the loop."""
from __future__ import annotations

import asyncio

import pytest

from clipipe.engine.wiring import run_in_thread


def test_result_and_exception_reach_the_awaiting_task():
    async def main() -> None:
        assert await asyncio.wait_for(run_in_thread(lambda: 42), 5) == 42

        def boom() -> None:
            raise OSError("pump broke")

        with pytest.raises(OSError, match="pump broke"):
            await asyncio.wait_for(run_in_thread(boom), 5)

    asyncio.run(main())
