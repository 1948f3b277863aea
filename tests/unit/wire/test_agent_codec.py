"""The agent's own msgpack codec against the msgpack package, byte for byte, on every protocol type."""
from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipipe.wire.bootstrap import agent_module

agent = agent_module()

#: text msgpack can encode (no lone surrogates)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
#: every int width: fixint, (u)int8/16/32/64 and the negative ranges
ints = st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-40, 300),
                 st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
                                  -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1,
                                  -(2**63)]))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts,
                    st.binary(max_size=300))
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=20),
    st.dictionaries(st.one_of(texts, st.binary(max_size=20)), children, max_size=20)), max_leaves=60)


@given(values)
@settings(max_examples=250)
def test_pack_matches_msgpack_package(value: object) -> None:
    """Encoding is byte-identical to msgpack.packb (use_bin_type, float64)."""
    assert agent.pack(value) == msgpack.packb(value, use_bin_type=True)


@given(values)
@settings(max_examples=250)
def test_unpack_reads_msgpack_package_output(value: object) -> None:
    """The agent decodes what the controller's msgpack encodes, to the same value."""
    assert agent.unpack(msgpack.packb(value, use_bin_type=True)) == value


@given(values)
@settings(max_examples=300)
def test_msgpack_package_reads_agent_output(value: object) -> None:
    """The controller decodes what the agent encodes."""
    assert msgpack.unpackb(agent.pack(value), raw=False, strict_map_key=False) == value


@pytest.mark.parametrize("n", [0, 15, 16, 255, 256, 65535, 65536, 70000])
def test_container_and_string_size_boundaries(n: int) -> None:
    """fix/8/16/32 headers of str, bin, array and map switch at the same sizes as msgpack's."""
    for value in ("x" * n, b"x" * n, [1] * n, {str(i): i for i in range(n)}):
        assert agent.pack(value) == msgpack.packb(value, use_bin_type=True)
        assert agent.unpack(agent.pack(value)) == value


def test_floats_special_values() -> None:
    """inf, -inf, -0.0 and NaN travel as float64 like msgpack's."""
    for value in (math.inf, -math.inf, -0.0, 1e308, 5e-324):
        assert agent.pack(value) == msgpack.packb(value)
    assert math.isnan(agent.unpack(msgpack.packb(math.nan)))
    assert agent.unpack(msgpack.packb(1.5, use_single_float=True)) == 1.5  # float32 is read too


def test_tuple_packs_as_list() -> None:
    """Tuples are arrays, as in msgpack."""
    assert agent.pack((1, "a")) == msgpack.packb((1, "a"))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\xd9", b"\xa3ab", b"\x92\x01", b"\xc4\x05abc",
                                  b"\xa2\xff\xfe", b"\xd4\x01\x02", b"\x81\x91\x01\x02", b"\x01\x02",
                                  b"\xdd\xff\xff\xff\xff", b"\x91" * 100 + b"\x01"])
def test_unpack_rejects_malformed_input(data: bytes) -> None:
    """Truncated, unknown (0xc1, ext), invalid utf-8, unhashable keys, trailing bytes, deep nesting."""
    with pytest.raises(agent.CodecError):
        agent.unpack(data)


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_unpack_random_bytes_raises_only_codec_error(data: bytes) -> None:
    """Garbage decodes to a value or raises CodecError; nothing else escapes."""
    try:
        agent.unpack(data)
    except agent.CodecError:
        pass


def test_pack_rejects_unsupported() -> None:
    """Objects outside the protocol's types and ints beyond 64 bits are refused."""
    for value in (object(), 2**64, -(2**63) - 1, {1.5j: 1}):
        with pytest.raises(agent.CodecError):
            agent.pack(value)


@given(st.integers(1, 2**31 - 1), st.binary(max_size=70000))
@settings(max_examples=100)
def test_encode_frame_data_matches_msgpack(channel: int, data: bytes) -> None:
    """The agent's zero-copy DATA frame equals a length prefix + msgpack.packb([ch, DATA, data])."""
    body = msgpack.packb([channel, agent.DATA, data], use_bin_type=True)
    assert b"".join(agent.encode_frame(channel, agent.DATA, data)) == len(body).to_bytes(4, "big") + body
