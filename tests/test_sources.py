"""Real captures parse into the canonical inputs (values asserted are read off the files)."""
from __future__ import annotations

import glob
import math

import pytest

from exporter.model import GpuSelector
from exporter.exposition import ExpositionError, parse
from exporter.sources import dcgm, sglang, trtllm, vllm

from conftest import FIXTURES, fixture_text


def test_vllm_033_v1_snapshot() -> None:
    e = vllm.parse(fixture_text("vllm/generated/vllm-0.33.0/snapshot-20.prom"))
    assert e.counters["prompt_tokens"] == 1171798
    assert e.counters["generation_tokens"] == 203844
    assert e.counters["preemptions"] == 71
    assert e.counters["requests_finished"] == 676 + 86 + 17  # stop + length + abort (+0 error, repetition)
    assert e.counters["requests_finished_reason:length"] == 86
    assert e.counters["prefix_cache_queries"] == 1171798 and e.counters["prefix_cache_hits"] == 308080
    assert e.gauges["requests_running"] == 9 and e.gauges["requests_waiting"] == 0
    assert e.gauges["kv_cache_usage"] == pytest.approx(0.3332352941176471)
    ttft = e.histograms["ttft_seconds"]
    assert ttft.count == 788 and dict(ttft.buckets)[0.1] == 275 and ttft.has_inf()
    assert "spec_draft_tokens" not in e.counters  # no spec decode in this variant
    assert e.lora is None


def test_vllm_011_features_lora_and_spec_decode_and_itl_precedence() -> None:
    text = fixture_text("vllm/generated/vllm-0.11.0-features/snapshot-20.prom")
    e = vllm.parse(text)
    assert e.counters["spec_draft_tokens"] == 216330 and e.counters["spec_accepted_tokens"] == 123614
    assert e.lora is not None and e.lora.max_lora == 4
    # 0.11 exposes both the old TPOT (really ITL) and inter_token_latency: only the new one is read
    itl_count = [s.value for s in parse(text, ["vllm:inter_token_latency_seconds_count"])
                 if s.name == "vllm:inter_token_latency_seconds_count"]
    assert e.histograms["itl_seconds"].count == sum(itl_count)


def test_vllm_v0_datadog_capture() -> None:
    e = vllm.parse(fixture_text("vllm/captured/v0-0.4.3-0.5.0_datadog-fixture.prom"))
    assert e.counters["prompt_tokens"] == 5 and e.counters["generation_tokens"] == 7
    assert e.gauges["kv_cache_usage"] == 0.0  # V0 name gpu_cache_usage_perc
    assert e.kv_capacity_tokens == 7281 * 16  # num_gpu_blocks x block_size
    assert e.histograms["ttft_seconds"].count == 1


def test_vllm_v0_hit_rate_minus_one_is_no_data_and_truncated_histogram_is_dropped() -> None:
    e = vllm.parse(fixture_text("vllm/captured/v0-0.7_aibrix-docs.prom"))
    assert "prefix_cache_hit_rate" not in e.gauges  # -1 means no data, never a 0% or -100% hit rate
    assert e.lora is None  # V0 always exposes lora_requests_info with max_lora="0"
    assert "iteration_tokens" not in e.histograms and e.counters["requests_finished_reason:stop"] == 4


def test_vllm_multiprocess_ordering_sum_first() -> None:
    text = fixture_text("vllm/captured/v0-0.6.5_docs-excerpt.prom")
    assert text.index("_sum") < text.index("_bucket")  # the capture really is multiprocess-ordered
    samples = parse(text, ["vllm:"])
    assert samples and all(not s.name.endswith("_created") for s in samples)


def test_sglang_0523_snapshot() -> None:
    e = sglang.parse(fixture_text("sglang/generated/sglang-0.5.23/snapshot-20.prom"))
    assert e.counters["requests_finished"] == 474 + 181  # summed over is_streaming
    assert e.counters["preemptions"] == 5  # num_retracted_requests_total
    assert e.counters["prefix_cache_hits"] == 65759
    assert e.gauges["requests_waiting"] == 3 and e.gauges["requests_running"] == 60
    assert e.gauges["kv_cache_usage"] == pytest.approx(0.99924)
    assert e.kv_capacity_tokens == 150000
    assert "spec_acceptance_rate" not in e.gauges  # spec_accept_rate 0.0 with no drafts is not data
    assert {"ttft_seconds", "itl_seconds", "prompt_tokens_per_request"} <= set(e.histograms)


def test_sglang_040_docs_capture() -> None:
    e = sglang.parse(fixture_text("sglang/v0.4.0_docs-production-metrics.prom"))
    assert e.counters["generation_tokens"] == 7557572
    assert e.counters["requests_finished"] == 11228  # e2e latency count: 0.4.0 has no request counter
    assert e.gauges["prefix_cache_hit_rate"] == pytest.approx(0.007507552643049313)
    assert e.gauges["requests_waiting"] == 2826


def test_trtllm_snapshot_against_prometheus_clients_parser() -> None:
    """TensorRT-LLM's families (tests/fixtures/trtllm/generate.py) read as an independent parser reads them."""
    from prometheus_client.parser import text_string_to_metric_families

    text = fixture_text("trtllm/generated/trtllm-050f80de/snapshot-20.prom")
    e = trtllm.parse(text)
    theirs: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            theirs[smp.name] = theirs.get(smp.name, 0.0) + smp.value
    assert e.counters["requests_finished"] == theirs["trtllm_request_success_total"] > 0
    assert e.counters["prefix_cache_queries"] == theirs["trtllm_prompt_tokens_total"]
    assert e.counters["prefix_cache_hits"] == theirs["trtllm_prompt_cached_tokens_total"] > 0
    assert e.gauges["kv_cache_usage"] == theirs["trtllm_kv_cache_utilization"]
    assert e.gauges["requests_waiting"] == theirs["trtllm_num_requests_waiting"]
    assert e.histograms["ttft_seconds"].count == theirs["trtllm_time_to_first_token_seconds_count"]
    assert e.histograms["itl_seconds"].count == theirs["trtllm_time_per_output_token_seconds_count"]
    assert e.kv_capacity_tokens == theirs["trtllm_kv_cache_max_blocks"] * theirs["trtllm_kv_cache_tokens_per_block"]
    reasons = {k.split(":", 1)[1]: v for k, v in e.counters.items() if k.startswith("requests_finished_reason:")}
    assert sum(reasons.values()) == e.counters["requests_finished"] and set(reasons) == {"stop", "length"}
    # what it lacks is absent, never zero: the eviction and workload rows say why
    assert "preemptions" not in e.counters and "prompt_tokens_per_request" not in e.histograms


def test_every_engine_capture_parses() -> None:
    files = glob.glob(str(FIXTURES / "vllm/**/*.prom"), recursive=True)
    assert len(files) >= 40
    for f in files:
        with open(f) as fh:
            text = fh.read()
        if "vllm:request_success_total" in text or "vllm:prompt_tokens_total" in text:
            assert vllm.parse(text).counters, f
    for f in glob.glob(str(FIXTURES / "sglang/**/*.prom"), recursive=True):
        with open(f) as fh:
            text = fh.read()
        parsed = sglang.parse(text)  # the t=0 snapshot has no counters yet, but must parse
        if "sglang:num_requests_total" in text:
            assert parsed.counters["requests_finished"] > 0, f


def test_dcgm_h100_k8s() -> None:
    gpus = dcgm.parse(fixture_text("dcgm/dcgm_h100x8_k8s_aicr.prom"))
    assert len(gpus) == 8 and all(g.model == "NVIDIA H100 80GB HBM3" for g in gpus)
    g0 = next(g for g in gpus if g.index == "0")
    assert g0.pod == "vllm-agg-0-vllmdecodeworker-s65j5" and g0.hostname == "gpu-node-1"
    assert g0.gpu_util == 0.0
    # selecting by pod returns the one GPU that pod owns
    assert [g.index for g in dcgm.select(gpus, GpuSelector(pod=g0.pod))] == ["0"]


def test_dcgm_mib_to_bytes_and_reserved() -> None:
    gpus = dcgm.parse(fixture_text("dcgm/dcgm_t4_dcp_ericsson-ccd.prom"))
    (g,) = gpus
    assert g.memory_used_bytes == 5120 * 2**20
    assert g.gr_engine_active == pytest.approx(0.156205)
    assert g.gpu_util == pytest.approx(0.91)
    assert g.memory_total_bytes == (5120 + 9791 + 447) * 2**20


def test_dcgm_mig_lowercase_hostname_and_selectors() -> None:
    gpus = dcgm.parse(fixture_text("dcgm/dcgm_mig_and_misc_excerpts.prom"))
    mig = [g for g in gpus if g.uuid == "GPU-58e8f5ea-13cc-013a-d88f-2bcf5ae8bc77"]
    assert sorted(str(g.mig_instance) for g in mig) == ["7", "8", "9"]  # one reading per MIG instance
    a30 = next(g for g in gpus if g.model == "NVIDIA A30")
    assert a30.hostname == "dcgm-exporter-wwwjh" and a30.mig_instance == "3"
    assert a30.memory_free_bytes == 2207 * 2**20
    from exporter.model import GpuSelector
    assert {g.model for g in dcgm.select(gpus, GpuSelector(indices=("1",)))} >= {"NVIDIA RTX 2000 Ada Generation"}


def test_dcgm_sentinel_and_nan_are_missing() -> None:
    text = ('DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-x",modelName="NVIDIA A100"} 9223372036854775794\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x",modelName="NVIDIA A100"} NaN\n'
            'DCGM_FI_DEV_FB_FREE{gpu="0",uuid="GPU-x",modelName="NVIDIA A100"} 100\n')
    (g,) = dcgm.parse(text)
    assert g.memory_used_bytes is None and g.gpu_util is None and g.memory_free_bytes == 100 * 2**20


def test_exposition_escapes_and_errors() -> None:
    s = parse('m{a="x\\"y",b="1\\\\2"} +Inf 123\nm2 NaN\n')
    assert s[0].labels == {"a": 'x"y', "b": "1\\2"} and math.isinf(s[0].value) and math.isnan(s[1].value)
    for bad in ("m{a=\"x} 1\n", "m 1 2 3\n", "m abc\n", "{}\n"):
        with pytest.raises(ExpositionError):
            parse(bad)
    with pytest.raises(ExpositionError):
        vllm.parse("<html>502</html>")


def test_data_parallel_engines_are_summed() -> None:
    text = fixture_text("vllm/generated/vllm-0.33.0/snapshot-20.prom")
    one = vllm.parse(text)
    # a second DP engine core: the same series with engine="1"
    two = vllm.parse(text + "\n".join(line.replace('engine="0"', 'engine="1"') for line in text.splitlines()
                                      if 'engine="0"' in line and not line.startswith("#")) + "\n")
    assert two.counters["generation_tokens"] == 2 * one.counters["generation_tokens"]
    assert two.histograms["ttft_seconds"].count == 2 * one.histograms["ttft_seconds"].count
    assert dict(two.histograms["ttft_seconds"].buckets)[0.1] == 2 * dict(one.histograms["ttft_seconds"].buckets)[0.1]
