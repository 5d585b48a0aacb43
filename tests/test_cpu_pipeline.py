"""The Segmenter's CPU loop: stages overlap, labels equal a plain slab-by-slab run, threads reach the backend."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from resunet_trt import Segmenter


SPACING = (1.0, 0.8, 0.8)


@pytest.fixture(scope="module")
def one_slab_labels(onnx_fp32, lits117):
    """The reference: the whole volume in one slab, so nothing overlaps (one preprocess, one network call, one
    decode, in turn)."""
    hu = lits117[0]
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=hu.shape[0]) as seg:
        return seg.segment(hu, spacing=SPACING).labels


@pytest.mark.parametrize("batch_size", [1, 7, 16])
def test_overlapped_loop_gives_the_one_slab_labels(onnx_fp32, lits117, one_slab_labels, batch_size):
    hu = lits117[0]
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=batch_size) as seg:
        got = seg.segment(hu, spacing=SPACING)
    np.testing.assert_array_equal(got.labels, one_slab_labels)
    assert (got.labels == 1).sum() > 1000  # a real liver, not an empty volume on both sides
    assert got.timings["slabs_wall"] > 0 and got.timings["infer"] > 0


class _WaitingBackend:
    """Wraps a backend so that the network call for slab k only returns once slab k + 1 has been preprocessed and
    slab k - 1 decoded (or after ``timeout`` s). In a loop that ran the stages one after another those events
    could not happen during the call: each wait would time out and be recorded as such."""

    def __init__(self, inner, n, timeout=5.0):
        self.inner, self.n, self.timeout = inner, n, timeout
        self.pre_done = [threading.Event() for _ in range(n)]
        self.dec_done = [threading.Event() for _ in range(n)]
        self.overlapped: list[tuple[bool, bool]] = []
        self.threads: list[int] = []

    def infer(self, batch):
        k = len(self.overlapped)
        out = self.inner.infer(batch)
        pre = self.pre_done[k + 1].wait(self.timeout) if k + 1 < self.n else True
        dec = self.dec_done[k - 1].wait(self.timeout) if k >= 1 else True
        self.overlapped.append((pre, dec))
        self.threads.append(threading.get_ident())
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_preprocess_and_decode_run_while_the_network_works(onnx_fp32, lits117, monkeypatch):
    hu = lits117[0]
    n = -(-hu.shape[0] // 32)
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=32) as seg:
        waiting = _WaitingBackend(seg.backend, n)
        monkeypatch.setattr(seg, "backend", waiting)
        net_input, decode = seg._net_input, seg._decode_cpu
        counts = {"pre": 0, "dec": 0}

        def counted_input(*a, **k):
            out = net_input(*a, **k)
            waiting.pre_done[counts["pre"]].set()
            counts["pre"] += 1
            return out

        def counted_decode(*a, **k):
            decode(*a, **k)
            waiting.dec_done[counts["dec"]].set()
            counts["dec"] += 1

        monkeypatch.setattr(seg, "_net_input", counted_input)
        monkeypatch.setattr(seg, "_decode_cpu", counted_decode)
        result = seg.segment(hu, spacing=SPACING)
    assert n >= 3 and counts == {"pre": n, "dec": n} and len(waiting.overlapped) == n
    assert waiting.overlapped == [(True, True)] * n
    assert threading.get_ident() not in waiting.threads  # the network ran in a worker thread
    assert (result.labels == 1).sum() > 1000


def test_a_network_failure_propagates(onnx_fp32, lits117, monkeypatch):
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", batch_size=8) as seg:

        def broken(batch):
            raise RuntimeError("network failed on purpose")

        monkeypatch.setattr(seg.backend, "infer", broken)
        with pytest.raises(RuntimeError, match="network failed on purpose"):
            seg.segment(lits117[0], spacing=SPACING)


def test_num_threads_reaches_the_backend(onnx_fp32, tmp_path, monkeypatch):
    with Segmenter(model=onnx_fp32, device="cpu", backend="onnxruntime", num_threads=1) as seg:
        opts = seg.backend._session.get_session_options()
        assert opts.intra_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    pytest.importorskip("openvino")
    monkeypatch.setenv("RESUNET_TRT_OPENVINO_CACHE", str(tmp_path))
    with Segmenter(model=onnx_fp32, device="cpu", backend="openvino", num_threads=1, precision="fp32") as seg:
        assert int(seg.backend._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert seg.backend.precision == "fp32"
    with pytest.raises(ValueError, match="threads must be an int >= 1 or None, got 'two'"):
        Segmenter(model=onnx_fp32, device="cpu", num_threads="two")
