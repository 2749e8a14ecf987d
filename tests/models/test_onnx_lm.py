"""The exported on-device LM (onnxruntime) against the torch model it came from.

One export per module (~15 s on 2 cores). The exported model is tiny-llama with its weights redrawn at
std 0.2: at the stock std 0.02 the random model only repeats its last token, which would make greedy
parity hold trivially.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from veil.client_sdk.runtime import generate as client
from veil.client_sdk.runtime.generate import ModelFileError, OnnxLM, SamplingParams, sample_next
from veil.client_sdk.runtime.manifest import read_manifest, sha256_file
from veil.models import generation
from veil.models.loading import ModelLoadError, load_model
from veil.models.onnx import lm as exporter
from veil.models.onnx.lm import LMExportError, export_causal_lm, export_lm
from veil.models.personalization import PersonalizationConfig, PersonalizedLM

PROMPTS = [[5, 9, 17, 33], [7, 8], [100, 3, 4, 5, 6, 7, 8]]
N_SOFT = 2


@pytest.fixture(scope="module")
def exported(data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, list]:
    loaded = load_model("tiny-llama", data_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    src = tmp_path_factory.mktemp("sharp-tiny-llama")
    loaded.model.save_pretrained(src)
    loaded.tokenizer.save_pretrained(src)
    out = tmp_path_factory.mktemp("onnx-lm")
    entries = export_lm(src, out, data_dir)
    return loaded.model, out, entries


@pytest.fixture(scope="module")
def onnx_lm(exported) -> OnnxLM:
    return OnnxLM(exported[1])


def _embeddings(hidden: int) -> list[np.ndarray | None]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(N_SOFT, hidden)).astype(np.float32), None, rng.normal(size=(N_SOFT, hidden))]


def test_export_writes_graph_tokenizer_and_manifest_entry(exported) -> None:
    _, out, entries = exported
    assert len(entries) == 1
    entry = entries[0]
    assert read_manifest(out).entry("lm") == entry
    assert (entry.name, entry.file, entry.kind, entry.opset) == ("lm", "lm.onnx", "lm", 18)
    assert entry.sha256 == sha256_file(out / "lm.onnx")
    names = [t.name for t in entry.inputs]
    assert names[:4] == ["input_ids", "prefix_embeds", "attention_mask", "position_ids"]
    assert names[4:6] == ["past_key_values.0.key", "past_key_values.0.value"] and len(names) == 8
    assert entry.outputs[1].shape == ("batch", 2, "total_seq", 16)
    extra = entry.extra
    assert (extra["n_layers"], extra["n_kv_heads"], extra["head_dim"], extra["hidden_size"]) == (2, 2, 16, 64)
    assert extra["export_max_rel_error"] < 1e-5
    assert extra["tokenizer"]["sha256"] == sha256_file(out / "tokenizer.json")
    assert (client.LM_ENTRY, client.LM_KIND, client.LM_FORMAT) == (
        exporter.LM_ENTRY,
        exporter.LM_KIND,
        exporter.LM_FORMAT,
    )


def test_client_runs_without_torch_or_transformers(exported) -> None:
    code = (
        "import sys; from veil.client_sdk.runtime.generate import OnnxLM, SamplingParams\n"
        f"m = OnnxLM({str(exported[1])!r})\n"
        "print(m.generate('Hello', params=SamplingParams(max_new_tokens=3, temperature=0))[0])\n"
        "print(sorted(k for k in ('torch', 'transformers') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    tokens, loaded = out.stdout.strip().splitlines()
    assert loaded == "[]"
    assert len(json.loads(tokens)) == 3


def test_greedy_equals_generate_batch_with_soft_prefixes(exported, onnx_lm: OnnxLM) -> None:
    lm = exported[0]
    plm = PersonalizedLM(lm, PersonalizationConfig(n_tokens=N_SOFT, placement="prefix")).eval()
    embs = _embeddings(onnx_lm.spec.hidden_size)
    want = generation.generate_batch(
        plm, PROMPTS, embs, [generation.SamplingParams(max_new_tokens=24, temperature=0.0)] * 3, pad_id=2
    )
    got = onnx_lm.generate_batch(
        PROMPTS, embs, SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=())
    )
    assert got == want
    assert len({t for toks, _ in got for t in toks}) > 20  # the outputs are not one repeated token


def test_greedy_equals_transformers_generate(exported, onnx_lm: OnnxLM) -> None:
    lm = exported[0]
    plm = PersonalizedLM(lm, PersonalizationConfig(n_tokens=N_SOFT, placement="prefix")).eval()
    emb = _embeddings(onnx_lm.spec.hidden_size)[0]
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=())
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        hf = lm.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=2
        )
        hf_soft = plm.generate(
            ids,
            torch.ones_like(ids),
            torch.from_numpy(emb[None]),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=2,
        )
    assert onnx_lm.generate(PROMPTS[2], params=greedy)[0] == hf[0, len(PROMPTS[2]) :].tolist()
    assert onnx_lm.generate(PROMPTS[2], prefix=emb, params=greedy)[0] == hf_soft[0].tolist()


def test_logits_match_uncached_torch_at_every_step(exported, onnx_lm: OnnxLM) -> None:
    lm = exported[0]
    embs = _embeddings(onnx_lm.spec.hidden_size)
    soft, soft_mask = onnx_lm._stack_prefixes(embs)
    width = max(map(len, PROMPTS))
    ids = np.array([[2] * (width - len(p)) + p for p in PROMPTS], dtype=np.int64)
    mask = np.concatenate([soft_mask, (np.arange(width) >= width - np.array([[len(p)] for p in PROMPTS]))], 1)
    mask = mask.astype(np.int64)
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    logits, cache = onnx_lm.forward(ids, mask, pos, None, soft)
    all_ids, all_pos = ids, pos
    for step in range(8):
        with torch.no_grad():
            text = lm.get_input_embeddings()(torch.from_numpy(all_ids))
            embeds = torch.cat([torch.from_numpy(soft), text], 1)
            ref = lm(
                inputs_embeds=embeds,
                attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(all_pos),
            )
        ref = ref.logits[:, -1].numpy()
        rel = np.abs(logits - ref).max() / np.abs(ref).max()
        assert rel < 1e-5, f"step {step}: relative logit error {rel:.2e}"
        nxt = ref.argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones_like(nxt)], 1)
        new_pos = all_pos[:, -1:] + 1
        all_ids, all_pos = np.concatenate([all_ids, nxt], 1), np.concatenate([all_pos, new_pos], 1)
        logits, cache = onnx_lm.forward(nxt, mask, new_pos, cache)
        assert cache[0].shape == (3, 2, mask.shape[1], 16)


def test_stop_tokens_eos_default_and_caller_stop(exported, onnx_lm: OnnxLM, tmp_path: Path) -> None:
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=())
    tokens, reason = onnx_lm.generate(PROMPTS[0], params=greedy)
    assert reason == "length" and len(tokens) == 12
    k = next(i for i, t in enumerate(tokens) if t not in tokens[:i] and i >= 3)
    stop = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=(tokens[k],))
    assert onnx_lm.generate(PROMPTS[0], params=stop) == (tokens[:k], "stop")
    d = _copy(exported, tmp_path)
    _edit_entry(d, eos_token_ids=[tokens[k]])
    eos = SamplingParams(max_new_tokens=12, temperature=0.0)  # stop_token_ids=None: the model's EOS ids
    assert OnnxLM(d).generate(PROMPTS[0], params=eos) == (tokens[:k], "stop")
    out = onnx_lm.generate_batch(
        [PROMPTS[0]] * 2, params=greedy, on_step=lambda s: {1} if s[0] == tokens[1] else None
    )
    assert out[0] == (tokens, "length") and out[1] == (tokens[:2], "stop")


def test_seeded_sampling_is_reproducible(onnx_lm: OnnxLM) -> None:
    p = SamplingParams(max_new_tokens=10, temperature=1.5, top_p=0.9, seed=123, stop_token_ids=())
    first = onnx_lm.generate_batch([PROMPTS[0], PROMPTS[1]], params=p)
    assert onnx_lm.generate_batch([PROMPTS[0], PROMPTS[2]], params=p)[0] == first[0]  # independent of batch
    assert (
        onnx_lm.generate(PROMPTS[0], params=SamplingParams(10, 1.5, 0.9, seed=124, stop_token_ids=()))[0]
        != first[0][0]
    )


def test_sample_next_matches_its_distribution() -> None:
    logits = np.log(np.array([1.0, 2.0, 4.0, 1e-9], dtype=np.float32))
    rng = np.random.default_rng(0)
    draws = np.bincount(
        [sample_next(logits, SamplingParams(temperature=1.0), rng) for _ in range(7000)], minlength=4
    )
    np.testing.assert_allclose(draws / 7000, [1 / 7, 2 / 7, 4 / 7, 0], atol=0.02)
    # top_p = 0.6: the top token (4/7 = 0.57) does not reach it, so the top two stay
    kept = {sample_next(logits, SamplingParams(temperature=1.0, top_p=0.6), rng) for _ in range(500)}
    assert kept == {1, 2}
    assert sample_next(logits, SamplingParams(temperature=0.0), rng) == 2


def test_text_round_trip_with_tokenizer(onnx_lm: OnnxLM) -> None:
    ids = onnx_lm.encode("Hello world")
    assert ids and onnx_lm.decode(ids) == "Hello world"


def test_forward_rejects_bad_shapes_and_ids(onnx_lm: OnnxLM) -> None:
    ids = np.array([[5, 6]])
    with pytest.raises(ValueError, match="attention_mask"):
        onnx_lm.forward(ids, np.ones((1, 3), np.int64), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="token ids"):
        onnx_lm.forward(np.array([[5, 10**6]]), np.ones((1, 2), np.int64), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="prefix"):
        onnx_lm.generate_batch([[5], [6]], [np.zeros((2, 64)), np.zeros((3, 64))])
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def _copy(exported, tmp_path: Path) -> Path:
    dst = tmp_path / "lm"
    shutil.copytree(exported[1], dst)
    return dst


def _edit_entry(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    entry = next(e for e in manifest["entries"] if e["name"] == "lm")
    for key, value in changes.items():
        if key in entry["extra"]:
            entry["extra"][key] = value
        else:
            entry[key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_corrupt_or_mismatched_files_give_clear_errors(exported, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    data = (d / "lm.onnx").read_bytes()
    (d / "lm.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or replaced"):
        OnnxLM(d)
    with pytest.raises(ModelFileError, match="lm.onnx"):
        OnnxLM(d, verify=False)  # truncated protobuf: refused by the opset reader or onnxruntime
    (d / "lm.onnx").write_bytes(data)
    OnnxLM(d)  # restored
    original = (d / "manifest.json").read_text()
    _edit_entry(d, opset=17)
    with pytest.raises(ModelFileError, match="opset 18; the manifest says 17"):
        OnnxLM(d)
    (d / "manifest.json").write_text(original)
    _edit_entry(d, n_kv_heads=3)  # sizes of another model
    with pytest.raises(ModelFileError, match="do not fit the manifest's sizes"):
        OnnxLM(d)
    (d / "manifest.json").write_text(original)
    entry = read_manifest(d).entry("lm").to_json()
    entry["inputs"][4]["shape"][1] = 3
    _edit_entry(d, inputs=entry["inputs"])
    with pytest.raises(ModelFileError, match="differ from the manifest"):
        OnnxLM(d)
    (d / "manifest.json").write_text(original)
    _edit_entry(d, format="something-else/9")
    with pytest.raises(ModelFileError, match="not a language model"):
        OnnxLM(d)
    (d / "manifest.json").write_text(original)
    with pytest.raises(ModelFileError, match="no graph 'other'"):
        OnnxLM(d, name="other")
    (d / "manifest.json").unlink()
    with pytest.raises(ModelFileError, match="no manifest"):
        OnnxLM(d)


def test_replaced_tokenizer_is_refused(exported, tmp_path: Path) -> None:
    d = _copy(exported, tmp_path)
    (d / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelFileError, match="tokenizer"):
        OnnxLM(d).encode("hi")


def test_export_refuses_what_it_cannot_export(tiny_base, tmp_path: Path, data_dir: str) -> None:
    with pytest.raises(LMExportError, match="float32"):
        export_causal_lm(tiny_base.half(), tmp_path)
    with pytest.raises(ValueError, match="opset"):
        export_causal_lm(tiny_base, tmp_path, opset=7)
    with pytest.raises(ModelLoadError):
        export_lm("no-such-model", tmp_path, data_dir)
    assert not (tmp_path / "lm.onnx").exists()


def test_reference_client_answers_locally_with_its_sample_as_prefix(
    exported, onnx_lm: OnnxLM, tmp_path: Path
) -> None:
    from veil.client_sdk import GaussianDistribution
    from veil.client_sdk.client import VeilClient, VeilClientError
    from veil.client_sdk.param_store import ParamStore

    lm = exported[0]
    hidden = onnx_lm.spec.hidden_size
    prior = GaussianDistribution(np.full((1, hidden), 0.3), np.full((1, hidden), 1e-6))  # a near point mass
    client = VeilClient(object(), ParamStore(tmp_path / "p.json"), model="m", local_lm=onnx_lm)
    client.initialise(prior)
    prompt = [5, 9, 17, 33]
    answer = client.generate_locally(prompt, max_new_tokens=6)
    plm = PersonalizedLM(lm, PersonalizationConfig(n_tokens=1, placement="prefix")).eval()
    want = generation.generate_batch(
        plm, [prompt], [prior.loc], [generation.SamplingParams(max_new_tokens=6, temperature=0.0)], pad_id=2
    )[0][0]
    assert answer == onnx_lm.decode(want)
    assert VeilClient(object(), ParamStore(tmp_path / "q.json"), model="m").local_lm is None
    with pytest.raises(VeilClientError):
        VeilClient(object(), ParamStore(tmp_path / "q.json"), model="m").generate_locally(prompt)
