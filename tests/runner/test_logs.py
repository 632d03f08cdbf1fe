"""runner.logs: line splitting, masking, the JSON Lines file, and live following through the hub."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.logs import JobLog, LogError, LogHub, LogLine, Masker, read_log

SECRET = "s3cr3t>>>???~~~value"  # its base64 holds + and /, so the urlsafe form differs


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def texts(path: Path) -> list[str]:
    return [line.text for line in read_log(path)]


def numbers(path: Path) -> list[int]:
    return [line.n for line in read_log(path)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "1.jsonl"


def open_log(path: Path, hub: LogHub | None = None, secrets: tuple[str, ...] = (), **kw: object) -> JobLog:
    return JobLog(path, 1, hub, Masker(secrets), clock=FakeClock(), **kw)  # type: ignore[arg-type]


# --- LogLine -------------------------------------------------------------------------------------------------


def test_line_json_round_trip_with_short_keys() -> None:
    line = LogLine(3, 1_700_000_000.125, "test", "stderr", 'héllo "x"\t')
    assert LogLine.from_json(line.to_json()) == line
    assert LogLine.from_json(line.to_json().encode()) == line
    assert line.to_json().startswith('{"n":3,"t":1700000000.125,"s":"test","o":"stderr","x":')


@pytest.mark.parametrize(
    "raw", ["", "{", "[]", '"x"', '{"n":1}', '{"n":0,"t":1,"s":"","o":"stdout","x":""}',
            '{"n":1,"t":1,"s":"","o":"bogus","x":""}', '{"n":1,"t":1,"s":"","o":["stdout"],"x":""}',
            '{"n":true,"t":1,"s":"","o":"stdout","x":""}', '{"n":1,"t":"x","s":"","o":"stdout","x":""}'],
)
def test_from_json_rejects_anything_else(raw: str) -> None:
    with pytest.raises(LogError):
        LogLine.from_json(raw)
    assert issubclass(LogError, RunnerError)


# --- splitting -----------------------------------------------------------------------------------------------


def test_lines_split_across_writes(path: Path) -> None:
    with open_log(path) as log:
        log.write("build", "stdout", b"hel")
        log.write("build", "stdout", b"lo\nwor")
        assert texts(path) == ["hello"]  # the partial line waits
        log.write("build", "stdout", b"ld\n\nlast\n")
    lines = list(read_log(path))
    assert [(l.n, l.step, l.stream, l.text) for l in lines] == [
        (1, "build", "stdout", "hello"), (2, "build", "stdout", "world"), (3, "build", "stdout", ""),
        (4, "build", "stdout", "last"),
    ]
    assert all(isinstance(l.t, float) for l in lines)


def test_crlf_and_lone_cr(path: Path) -> None:
    with open_log(path) as log:
        log.write("s", "stdout", b"a\r\nb\r")
        log.write("s", "stdout", b"\nc\r")  # \r\n split across writes is one line end
        log.write("s", "stdout", b"10%\r20%\r")
        log.flush("s")
    assert texts(path) == ["a", "b", "c", "10%", "20%"]


def test_partial_line_flushed_at_step_end_and_streams_kept_apart(path: Path) -> None:
    with open_log(path) as log:
        log.write("one", "stdout", b"out-")
        log.write("one", "stderr", b"err-")
        log.write("two", "stdout", b"other")
        log.write("one", "stdout", b"end")
        log.flush("one")
        assert sorted((l.stream, l.text) for l in read_log(path)) == [("stderr", "err-"), ("stdout", "out-end")]
        log.flush("one")  # nothing left: no empty line
        assert len(texts(path)) == 2
    assert texts(path)[-1] == "other"  # close flushes the rest


def test_long_line_split_into_chunks(path: Path) -> None:
    with open_log(path) as log:
        log.write("s", "stdout", b"a" * (100 * 1024))
        log.write("s", "stdout", b"b" * (100 * 1024) + b"\nnext\n")
    lines = texts(path)
    assert [len(t) for t in lines] == [65536, 65536, 65536, 8192, 4]
    assert "".join(lines[:4]) == "a" * 102400 + "b" * 102400


def test_chunk_boundary_keeps_utf8_characters_whole(path: Path) -> None:
    with open_log(path, max_line=16) as log:
        log.write("s", "stdout", ("x" * 15 + "é" * 10 + "\n").encode())
    lines = texts(path)
    assert "".join(lines) == "x" * 15 + "é" * 10
    assert "\ufffd" not in "".join(lines)
    assert all(len(t.encode()) <= 16 for t in lines)


def test_invalid_utf8_replaced_and_split_character_intact(path: Path) -> None:
    snowman = "☃".encode()
    with open_log(path) as log:
        log.write("s", "stdout", b"bad \xff\xfe end\n")
        log.write("s", "stdout", b"a" + snowman[:1])
        log.write("s", "stdout", snowman[1:2])
        log.write("s", "stdout", snowman[2:] + b"b\n")
    assert texts(path) == ["bad \ufffd\ufffd end", "a☃b"]


def test_rejects_unknown_stream_and_writes_after_close(path: Path) -> None:
    log = open_log(path)
    with pytest.raises(ValueError):
        log.write("s", "system", b"x\n")
    log.close()
    log.close()
    with pytest.raises(LogError):
        log.write("s", "stdout", b"x\n")


def test_system_messages_and_on_line(path: Path) -> None:
    seen: list[LogLine] = []
    with open_log(path, secrets=(SECRET,), on_line=seen.append) as log:
        line = log.system(f"cloning with {SECRET}\n")
        log.write("build", "stdout", b"x\n")
        log.system("step failed", step="build")
    assert line == LogLine(1, line.t, "", "system", "cloning with ***")
    assert seen == list(read_log(path))
    assert [(l.step, l.stream) for l in seen] == [("", "system"), ("build", "stdout"), ("build", "system")]


# --- the file ------------------------------------------------------------------------------------------------


def test_numbering_continues_after_reopening(path: Path) -> None:
    with open_log(path) as log:
        log.write("s", "stdout", b"1\n2\n")
    with open_log(path) as log:  # attempt 2
        log.system("retrying")
        log.write("s", "stdout", b"3\n")
    assert numbers(path) == [1, 2, 3, 4]
    assert [l.n for l in read_log(path, after=2)] == [3, 4]


def test_numbering_continues_after_a_long_tail(path: Path) -> None:
    with open_log(path, max_line=1 << 20) as log:
        log.write("s", "stdout", b"short\n" + b"z" * 300_000 + b"\n")  # last line longer than a tail block
    with open_log(path) as log:
        log.write("s", "stdout", b"more\n")
    assert numbers(path) == [1, 2, 3]


def test_torn_last_line_tolerated(path: Path) -> None:
    with open_log(path) as log:
        log.write("s", "stdout", b"one\ntwo\n")
    with path.open("ab") as file:
        file.write(b'{"n":3,"t":1.0,"s":"s","o":"std')  # a crash mid-write
    assert texts(path) == ["one", "two"]
    with open_log(path) as log:  # the next attempt still writes intact lines
        log.write("s", "stdout", b"three\n")
    assert [(l.n, l.text) for l in read_log(path)] == [(1, "one"), (2, "two"), (3, "three")]


def test_read_log_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert list(read_log(tmp_path / "nope.jsonl")) == []


# --- masking -------------------------------------------------------------------------------------------------


def test_masker_whole_value_and_short_values_ignored() -> None:
    masker = Masker([SECRET, "", "ab", "abc"])
    assert masker.mask(f"x{SECRET}y {SECRET}") == "x***y ***"
    assert masker.mask("ab abc cab") == "ab abc cab"
    assert Masker.empty().mask(SECRET) == SECRET
    assert SECRET not in repr(masker)


def test_masker_multiline_secret_masked_line_by_line() -> None:
    key = "-----BEGIN KEY-----\nAAAAsecretline\n-----END KEY-----"
    masker = Masker([key])
    assert masker.mask("AAAAsecretline") == "***"
    assert masker.mask(key) == "***"


def test_masker_base64_forms() -> None:
    masker = Masker([SECRET])
    std = base64.b64encode(SECRET.encode()).decode()
    url = base64.urlsafe_b64encode(SECRET.encode()).decode()
    assert std != url
    assert masker.mask(f"a {std} b") == "a *** b"
    assert masker.mask(f"a {url} b") == "a *** b"
    assert masker.mask(f"a {url.rstrip('=')} b") == "a *** b"


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
@pytest.mark.parametrize("prefix", ["", "t", "to", "token=", "token=1", "token=12"])
@pytest.mark.parametrize("suffix", ["", "\n", "\n!", "\n!!"])
def test_masker_base64_inside_a_larger_blob(
    encode: Callable[[bytes], bytes], prefix: str, suffix: str
) -> None:
    blob = encode((prefix + SECRET + suffix).encode()).decode()
    masked = Masker([SECRET]).mask(blob)
    head, sep, tail = masked.partition("***")
    assert sep and blob.startswith(head) and blob.endswith(tail)
    # every character made of the secret's bits alone is masked
    assert len(head) <= -(-len(prefix) * 8 // 6)
    assert len(blob) - len(tail) >= (len(prefix) + len(SECRET)) * 8 // 6


def test_secret_masked_in_log_whole_and_split_across_writes(path: Path) -> None:
    with open_log(path, secrets=(SECRET,)) as log:
        log.write("s", "stdout", f"key={SECRET}\n".encode())
        log.write("s", "stderr", f"split {SECRET[:7]}".encode())
        log.write("s", "stderr", f"{SECRET[7:]} done\n".encode())
        blob = base64.b64encode(f"token={SECRET}\n".encode())
        log.write("s", "stdout", b"auth " + blob[:10])
        log.write("s", "stdout", blob[10:] + b"\n")
    lines = texts(path)
    assert lines[:2] == ["key=***", "split *** done"]
    assert lines[2].startswith("auth ") and "***" in lines[2]
    assert not any(SECRET in line for line in lines)
    assert base64.b64encode(SECRET.encode())[4:-4].decode() not in path.read_text()


@pytest.mark.parametrize("at", range(20, 40))
def test_secret_across_a_chunk_boundary_still_masked(path: Path, at: int) -> None:
    with open_log(path, secrets=(SECRET,), max_line=32) as log:
        log.write("s", "stdout", b"x" * at)
        log.write("s", "stdout", SECRET.encode() + b"y" * 50 + b"\n")
    lines = texts(path)
    assert "".join(lines) == "x" * at + "***" + "y" * 50
    assert all(len(t) <= 32 for t in lines)
    assert SECRET[:5] not in path.read_text()


# --- following -----------------------------------------------------------------------------------------------


async def collect(hub: LogHub, path: Path, after: int = 0, done: Callable[[], bool] = lambda: True) -> list[int]:
    return [line.n async for line in hub.follow(1, path, after, done=done)]


async def test_follow_replays_a_finished_log(path: Path) -> None:
    hub = LogHub()
    with open_log(path, hub) as log:
        log.write("s", "stdout", b"a\nb\nc\n")
    assert await asyncio.wait_for(collect(hub, path), 1) == [1, 2, 3]
    assert await asyncio.wait_for(collect(hub, path, after=2), 1) == [3]
    assert await asyncio.wait_for(collect(hub, path, after=3), 1) == []
    assert hub.followers(1) == 0


async def test_follow_live_until_the_log_is_finished(path: Path) -> None:
    hub = LogHub()
    log = open_log(path, hub)
    log.write("s", "stdout", b"1\n2\n")
    task = asyncio.create_task(collect(hub, path, after=1, done=lambda: False))
    await asyncio.sleep(0.01)
    assert hub.followers(1) == 1
    log.write("s", "stdout", b"3\n")
    await asyncio.sleep(0)
    log.write("s", "stdout", b"4\n")
    assert not task.done()
    log.close()
    assert await asyncio.wait_for(task, 1) == [2, 3, 4]
    assert hub.followers(1) == 0


async def test_follow_waits_for_a_queued_job_and_ends_when_done_without_a_writer(path: Path) -> None:
    hub = LogHub(poll=0.01)
    state = {"done": False}
    task = asyncio.create_task(collect(hub, path, done=lambda: state["done"]))
    await asyncio.sleep(0.05)
    assert not task.done()  # no file, no writer yet: the job is only queued
    state["done"] = True  # cancelled while queued: no writer ever finishes the log
    assert await asyncio.wait_for(task, 1) == []


async def test_follow_switch_from_file_to_live_never_gaps_or_duplicates(tmp_path: Path) -> None:
    for seed in range(150):
        rnd = random.Random(seed)
        path = tmp_path / f"{seed}.jsonl"
        hub = LogHub(queue_size=rnd.choice([2, 5, 10_000]), poll=0.01)
        total = rnd.randint(1, 60)
        after = rnd.randint(0, 5)
        log = open_log(path, hub)

        async def writer() -> None:
            for n in range(total):
                log.write("s", rnd.choice(["stdout", "stderr"]), f"{n}\n".encode())
                for _ in range(rnd.choice([0, 0, 1, 3])):
                    await asyncio.sleep(0)
            log.close()

        async def follower() -> list[int]:
            for _ in range(rnd.randint(0, 40)):  # join at a random point of the writing
                await asyncio.sleep(0)
            seen = []
            async for line in hub.follow(1, path, after, done=lambda: not log_open()):
                seen.append(line.n)
                for _ in range(rnd.choice([0, 0, 1, 4])):
                    await asyncio.sleep(0)
            return seen

        def log_open() -> bool:
            return not log._file.closed

        followers = [asyncio.create_task(follower()) for _ in range(3)]
        await writer()
        for result in await asyncio.wait_for(asyncio.gather(*followers), 5):
            assert result == list(range(after + 1, total + 1)), seed
        assert hub.followers(1) == 0


async def test_hundred_followers_receive_every_line(path: Path) -> None:
    hub = LogHub()
    log = open_log(path, hub)
    log.write("s", "stdout", b"early\n")
    tasks = [asyncio.create_task(collect(hub, path, done=lambda: False)) for _ in range(100)]
    for n in range(500):
        log.write("s", "stdout", f"{n}\n".encode())
        if n % 7 == 0:
            await asyncio.sleep(0)
    log.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(result == list(range(1, 502)) for result in results)
    assert hub.followers(1) == 0


async def test_slow_follower_falls_back_to_the_file_without_losing_lines(path: Path) -> None:
    hub = LogHub(queue_size=10)
    log = open_log(path, hub)
    log.write("s", "stdout", b"0\n")
    follow = hub.follow(1, path, done=lambda: False)
    assert (await anext(follow)).n == 1  # replayed from the file; now subscribed
    assert hub.followers(1) == 1
    for n in range(1, 1000):  # the follower is not reading: its queue overflows
        log.write("s", "stdout", f"{n}\n".encode())
    assert hub.followers(1) == 0  # dropped from live instead of blocking or growing
    seen = [(await anext(follow)).n for _ in range(999)]
    assert seen == list(range(2, 1001))
    waiting = asyncio.ensure_future(anext(follow))
    await asyncio.sleep(0.01)
    assert hub.followers(1) == 1  # caught up from the file: live again
    log.write("s", "stdout", b"live\n")
    assert (await asyncio.wait_for(waiting, 1)).text == "live"
    for n in range(20):  # overflow again, and the writer finishes while the follower is not live
        log.write("s", "stdout", f"again {n}\n".encode())
    log.close()
    rest = [line.n async for line in follow]  # ends although done() never says so: finish reached it
    assert rest == list(range(1002, 1022))
    assert hub.followers(1) == 0


async def test_cancelled_follower_frees_its_subscription(path: Path) -> None:
    hub = LogHub()
    log = open_log(path, hub)
    log.write("s", "stdout", b"a\n")
    task = asyncio.create_task(collect(hub, path, done=lambda: False))
    await asyncio.sleep(0.01)
    assert hub.followers(1) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.followers(1) == 0

    follow = hub.follow(1, path, done=lambda: False)  # a client that disconnects mid-stream
    assert (await anext(follow)).text == "a"
    assert hub.followers(1) == 1
    await follow.aclose()
    assert hub.followers(1) == 0
    log.write("s", "stdout", b"b\n")  # publishing to nobody is fine
    log.close()
