"""Benchmark: supernet training and cached scoring throughput on a GPU, plain and made fast.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--batch-sizes 32,256] [--steps 60]
                                      [--warmup 15] [--modes ...] [--compile] [--quick] [--json]
                                      [--out DIR]

Prepared for a lent device machine (one run, well inside a 15-minute lease: about 2-4 minutes
on an H200 without ``--compile``); it also runs on the CPU (``--device cpu``, the CUDA-graph mode
skipped), which is how the tests keep it working.

Model and data: the CMU-MOSEI shape of ``bench_training.py`` (text 50 x 768, audio 50 x 74, vision
50 x 35; width 256, 8 heads, dropout 0.4, linear regression head, L1 loss, AdamW), a split of
random features resident on the device; each step takes the next batch of a shuffled order.

Training modes, each timed over ``--steps`` steps after ``--warmup`` (samples/s, device synced).
First ``mro-search train``'s own step, ``supernet.train.TrainStep`` (what ``train_supernet`` calls
for every batch: masks drawn on the host as training draws them, the gradient-norm statistics,
the finiteness checks, AdamW), configured by ``[train]`` settings:

- ``train_fp32``: ``masks_per_step = 1``, ``precision = "fp32"``: the default step, float32;
- ``train_bf16``: the same with ``precision = "bf16"`` (what ``auto`` gives on CUDA);
- ``train_per_sample_fp32`` and ``train_per_sample_batched_fp32``: ``per_sample_masks = true``,
  float32, paths one by one and as one batched operation (``batched_paths``: the measured rule
  behind its ``auto``);
- ``train_per_sample_bf16``: ``per_sample_masks = true``, ``batched_paths = true``, bf16;
- ``train_graph_bf16`` (CUDA only): the same with ``cuda_graph = true``;

and ``train_supernet`` itself (``loop``): one epoch over ``--samples`` samples held on the host
(pinned, non-blocking copies), per-sample masks, precision/batched paths/CUDA graph as ``auto``
and ``cuda_graph = true`` give on the device, the prior refined every 10 steps, samples/s from
its history (training steps only).

Then hand-written copies of the step (the reference figures of the issue were measured with
them; the gap to the ``train_*`` modes is what the training loop's bookkeeping costs):

- ``eager``: the step of ``train_supernet`` with ``masks_per_step = 1`` (one uniform mask for the
  batch, the subnet's paths one by one), float32;
- ``eager_bf16``: the same under ``torch.autocast(dtype=bfloat16)``;
- ``per_sample_bf16``: ``[train] per_sample_masks``: a mask per sample, drawn on the device, every
  path run once by ``supernet.batched.batched_pooled_paths`` (all paths as one batched operation),
  bf16; static shapes;
- ``per_sample_loop_bf16``: the same with the paths one by one (``Supernet.pooled_paths``): what
  the batched operation adds;
- ``graph_bf16`` (CUDA only): ``per_sample_bf16`` with the whole step (batch gather, mask draw,
  forward, backward, AdamW with ``capturable=True``) captured in one CUDA graph and replayed;
  the per-sample masks are a tensor input, so the graph stays static;
- ``compile_bf16`` (``--compile``): ``per_sample_bf16``'s loss under ``torch.compile`` (default
  mode; max-autotune takes minutes). Compilation time is reported apart.

Targets (issue 5): at least 13,000 samples/s at batch 32 and 40,000 at batch 256 for the best
mode. Reference from the issue, H200: plain eager 2,091 (32) / 16,028 (256); one CUDA graph, bf16,
per-sample masks 13,513 / 41,492.

Cached scoring, k = 6 (30 paths): ``build_cache``'s pooled outputs projected by the linear head
``(N, P, 1)`` on the device, ``--score-masks`` random masks per call -> acc_7 of each
(``supernet.metrics.batch_metric`` on the device), masks/s; checked against ``score_masks`` on
the CPU for a subset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import torch  # noqa: E402

from supernet.batched import batched_pooled_paths  # noqa: E402
from supernet.config import ModelConfig, TrainConfig  # noqa: E402
from supernet.data.dataset import ModalitySpec, MultimodalData, Split  # noqa: E402
from supernet.metrics import batch_metric  # noqa: E402
from supernet.model import Supernet, SupernetSpec  # noqa: E402
from supernet.relation_graph import RelationGraphPrior  # noqa: E402
from supernet.scoring import PathCache, score_masks  # noqa: E402
from supernet.train import TrainStep, _Statistics, task_loss, train_supernet, uniform_masks  # noqa: E402

MOSEI = (ModalitySpec("text", 768, 50), ModalitySpec("audio", 74, 50), ModalitySpec("vision", 35, 50))
TARGETS = {32: 13_000, 256: 40_000}
TRAIN_MODES = {  # mro-search train's own step (supernet.train.TrainStep), by its [train] settings
    "train_fp32": {"precision": "fp32"},
    "train_bf16": {"precision": "bf16"},
    "train_per_sample_fp32": {"precision": "fp32", "per_sample_masks": True, "batched_paths": False},
    "train_per_sample_batched_fp32": {"precision": "fp32", "per_sample_masks": True, "batched_paths": True},
    "train_per_sample_bf16": {"precision": "bf16", "per_sample_masks": True, "batched_paths": True},
    "train_graph_bf16": {"precision": "bf16", "per_sample_masks": True, "batched_paths": True, "cuda_graph": True},
}
MODES = (*TRAIN_MODES, "loop", "eager", "eager_bf16", "per_sample_loop_bf16", "per_sample_bf16", "graph_bf16")
QUICK = {"width": 32, "heads": 4, "length": 6, "samples": 64, "batch_sizes": "8", "steps": 3, "warmup": 1,
         "score_samples": 50, "score_masks": 64}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One supernet, its optimizer and a device-resident split, stepped in the chosen mode."""

    def __init__(self, args, batch_size: int, device: torch.device, capturable: bool = False) -> None:
        torch.manual_seed(args.seed)
        spec = tuple(ModalitySpec(m.name, m.dim, args.length) for m in MOSEI)
        cfg = ModelConfig(width=args.width, heads=args.heads, dropout=0.4, head="linear")
        self.model = Supernet(SupernetSpec(spec, "regression", 1), cfg).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01,
                                           capturable=capturable)
        g = torch.Generator(device=device).manual_seed(args.seed)
        self.features = [torch.randn(args.samples, args.length, m.dim, device=device, generator=g) for m in MOSEI]
        self.labels = torch.rand(args.samples, device=device, generator=g) * 6 - 3
        self.device, self.batch_size, self.P = device, batch_size, self.model.num_paths
        self.cpu_g = torch.Generator().manual_seed(args.seed)
        self.dev_g = torch.Generator(device=device).manual_seed(args.seed + 1)
        self.order = torch.randperm(args.samples, device=device, generator=self.dev_g)
        self.at = 0
        # no autocast weight cache: a cached cast made during CUDA-graph capture would go stale
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not capturable)

    def next_index(self) -> torch.Tensor:
        if self.at + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.order), device=self.device, generator=self.dev_g)
            self.at = 0
        index = self.order[self.at : self.at + self.batch_size]
        self.at += self.batch_size
        return index

    def per_sample_masks(self, n: int) -> torch.Tensor:
        """Uniform non-empty masks drawn on the device without a host sync: an empty row gets
        one random path (a draw that differs from rejection sampling only on 2**-P of rows)."""
        masks = torch.rand(n, self.P, device=self.device) < 0.5
        empty = ~masks.any(dim=1)
        pick = torch.randint(self.P, (n,), device=self.device)
        masks[torch.arange(n, device=self.device), pick] |= empty
        return masks.float()

    def per_sample_loss(self, features, labels, masks, batched: bool = True) -> torch.Tensor:
        pooled = (batched_pooled_paths(self.model, features) if batched
                  else self.model.pooled_paths(features))  # (B, P, C)
        return task_loss(self.model.forward_per_sample(pooled, masks), labels, "regression")

    def step(self, mode: str) -> None:
        index = self.next_index()
        features = [f[index] for f in self.features]
        labels = self.labels[index]
        self.optimizer.zero_grad(set_to_none=True)
        if mode in ("eager", "eager_bf16"):
            mask = uniform_masks(1, self.P, self.cpu_g)[0]
            if mode == "eager":
                loss = task_loss(self.model(features, mask), labels, "regression")
            else:
                with self.autocast:
                    loss = task_loss(self.model(features, mask), labels, "regression")
        else:
            with self.autocast:
                loss = self.per_sample_loss(features, labels, self.per_sample_masks(len(index)),
                                            batched=mode != "per_sample_loop_bf16")
        loss.backward()
        self.optimizer.step()


def time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - started


def run_train_step(args, mode: str, batch_size: int, device: torch.device) -> dict:
    """``supernet.train.TrainStep`` built as ``train_supernet`` builds it, stepped on the
    device-resident batches of ``Bench``, masks drawn on the host as training draws them."""
    settings = TRAIN_MODES[mode]
    if settings.get("cuda_graph") and device.type != "cuda":
        return {"mode": mode, "batch_size": batch_size, "skipped": "CUDA graphs need a CUDA device"}
    bench = Bench(args, batch_size, device)
    cfg = TrainConfig(batch_size=batch_size, masks_per_step=1, device=str(device), **settings)
    bench.optimizer = torch.optim.AdamW(bench.model.parameters(), lr=1e-4, weight_decay=0.01,
                                        **({"capturable": True} if cfg.cuda_graph else {}))
    prior = RelationGraphPrior(bench.model.k)
    notes: list[str] = []
    step = TrainStep(bench.model, bench.optimizer, _Statistics(bench.model, prior), cfg, "regression", device, log=notes.append)
    g = torch.Generator().manual_seed(args.seed)

    def one() -> None:
        index = bench.next_index()
        masks = uniform_masks(batch_size if cfg.per_sample_masks else 1, bench.P, g)
        step([f[index] for f in bench.features], [None] * len(MOSEI), bench.labels[index], masks.to(device))

    seconds = time_steps(one, device, args.warmup, args.steps)
    row = {"mode": mode, "batch_size": batch_size, "samples_per_s": args.steps * batch_size / seconds,
           "step_ms": 1000 * seconds / args.steps, "graph": step.graph is not None, "batched": step.batched}
    if notes:
        row["notes"] = notes
    return row


def run_loop(args, batch_size: int, device: torch.device) -> dict:
    """``train_supernet`` itself, one epoch: the figure a user of ``mro-search train`` sees."""
    g = torch.Generator().manual_seed(args.seed)
    spec = [ModalitySpec(m.name, m.dim, args.length) for m in MOSEI]

    def split(n: int) -> Split:
        return Split(features={m.name: torch.randn(n, m.length, m.dim, generator=g) for m in spec},
                     labels=torch.rand(n, generator=g) * 6 - 3)

    data = MultimodalData(modalities=spec, task="regression",
                          splits={"train": split(args.samples), "valid": split(256), "test": split(32)})
    cfg = TrainConfig(epochs=1, warmup_epochs=1, batch_size=batch_size, per_sample_masks=True,
                      cuda_graph=device.type == "cuda", device=str(device), seed=args.seed)
    model_cfg = ModelConfig(width=args.width, heads=args.heads, dropout=0.4, head="linear")
    started = time.perf_counter()
    result = train_supernet(data, model_cfg, cfg, progress=False)
    h = result.history[0]
    return {"mode": "loop", "batch_size": batch_size, "samples_per_s": h["samples_per_s"],
            "step_ms": 1000 * h["seconds"] / -(-args.samples // batch_size), "wall_s": time.perf_counter() - started}


def run_mode(args, mode: str, batch_size: int, device: torch.device) -> dict:
    if mode in TRAIN_MODES:
        return run_train_step(args, mode, batch_size, device)
    if mode == "loop":
        return run_loop(args, batch_size, device)
    if mode == "graph_bf16":
        return run_graph(args, batch_size, device)
    bench = Bench(args, batch_size, device)
    if mode == "compile_bf16":
        return run_compiled(args, bench, batch_size, device)
    seconds = time_steps(lambda: bench.step(mode), device, args.warmup, args.steps)
    return {"mode": mode, "batch_size": batch_size, "samples_per_s": args.steps * batch_size / seconds,
            "step_ms": 1000 * seconds / args.steps}


def run_compiled(args, bench: Bench, batch_size: int, device: torch.device) -> dict:
    loss_fn = torch.compile(bench.per_sample_loss)

    def step() -> None:
        index = bench.next_index()
        bench.optimizer.zero_grad(set_to_none=True)
        with bench.autocast:
            loss = loss_fn([f[index] for f in bench.features], bench.labels[index],
                           bench.per_sample_masks(len(index)))
        loss.backward()
        bench.optimizer.step()

    started = time.perf_counter()
    step()
    sync(device)
    compile_s = time.perf_counter() - started
    seconds = time_steps(step, device, args.warmup, args.steps)
    return {"mode": "compile_bf16", "batch_size": batch_size, "samples_per_s": args.steps * batch_size / seconds,
            "step_ms": 1000 * seconds / args.steps, "compile_s": compile_s}


def run_graph(args, batch_size: int, device: torch.device) -> dict:
    """The whole per-sample bf16 step captured in one CUDA graph (PyTorch's whole-network capture
    recipe: warm up on a side stream, capture, replay). Batch gather and mask draw are inside."""
    if device.type != "cuda":
        return {"mode": "graph_bf16", "batch_size": batch_size, "skipped": "CUDA graphs need a CUDA device"}
    bench = Bench(args, batch_size, device, capturable=True)
    index = torch.zeros(batch_size, dtype=torch.long, device=device)  # static input: the batch's rows

    def body() -> None:
        features = [f.index_select(0, index) for f in bench.features]
        labels = bench.labels.index_select(0, index)
        with bench.autocast:
            loss = bench.per_sample_loss(features, labels, bench.per_sample_masks(batch_size))
        loss.backward()
        bench.optimizer.step()

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            index.copy_(bench.next_index())
            bench.optimizer.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    bench.optimizer.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with torch.cuda.graph(graph):
        body()
    sync(device)
    capture_s = time.perf_counter() - started

    def step() -> None:
        index.copy_(bench.next_index())
        graph.replay()

    seconds = time_steps(step, device, args.warmup, args.steps)
    return {"mode": "graph_bf16", "batch_size": batch_size, "samples_per_s": args.steps * batch_size / seconds,
            "step_ms": 1000 * seconds / args.steps, "capture_s": capture_s}


def run_scoring(args, device: torch.device) -> dict:
    """Cached scoring for k = 6 (30 paths) on the device, checked against ``score_masks``."""
    torch.manual_seed(args.seed)
    spec = tuple(ModalitySpec(f"m{i}", 16, 4) for i in range(6))
    model = Supernet(SupernetSpec(spec, "regression", 1), ModelConfig(width=args.width, heads=args.heads,
                                                                       head="linear")).eval()
    P = model.num_paths
    g = torch.Generator().manual_seed(args.seed)
    pooled = torch.randn(args.score_samples, P, args.width, generator=g)
    labels = torch.rand(args.score_samples, generator=g) * 6 - 3
    projected = pooled @ model.head.weight.detach().T  # (N, P, 1): what build_cache keeps
    cache = PathCache(pooled=pooled, labels=labels, task="regression", projected=projected)
    masks = uniform_masks(args.score_masks, P, g)
    proj_d, labels_d, masks_d = projected.to(device), labels.to(device), masks.to(device)
    bias = model.head.bias.detach().to(device)

    def score() -> torch.Tensor:
        weights = masks_d / masks_d.sum(dim=1, keepdim=True)
        predictions = torch.einsum("mp,npo->mno", weights, proj_d) + bias
        return batch_metric(predictions, labels_d, "acc_7")

    on_device = score().cpu()
    reference = score_masks(model, cache, masks[:256], "acc_7")
    max_diff = float((on_device[:256] - reference).abs().max())
    seconds = time_steps(score, device, args.warmup, args.steps)
    return {"paths": P, "samples": args.score_samples, "masks_per_call": args.score_masks,
            "masks_per_s": args.steps * args.score_masks / seconds, "max_abs_diff_vs_score_masks": max_diff}


def markdown(report: dict) -> str:
    info, s = report["machine"], report["settings"]
    lines = [
        f"**bench_gpu** ({info['date']}, {info.get('gpu') or 'no GPU'}, torch {info['torch']}; width {s['width']}, "
        f"length {s['length']}, {s['steps']} timed steps after {s['warmup']}"
        f"{', QUICK settings' if s['quick'] else ''})",
        "",
        "| mode | batch | samples/s | step ms | note |",
        "|---|---|---|---|---|",
    ]
    for r in report["training"]:
        if "skipped" in r:
            lines.append(f"| {r['mode']} | {r['batch_size']} | – | – | skipped: {r['skipped']} |")
            continue
        note = ", ".join(f"{k} {r[k]:.1f}" for k in ("compile_s", "capture_s", "wall_s") if k in r)
        lines.append(f"| {r['mode']} | {r['batch_size']} | {r['samples_per_s']:,.0f} | {r['step_ms']:.2f} | {note} |")
    lines.append("")
    for b, t in report["targets"].items():
        lines.append(f"- batch {b}: best {t['best_samples_per_s']:,.0f} samples/s ({t['best_mode']}); "
                     f"target {t['target']:,}: **{t['verdict']}**")
    sc = report["scoring"]
    lines += ["", f"Cached scoring, k = 6 ({sc['paths']} paths), {sc['samples']} samples: "
                  f"**{sc['masks_per_s']:,.0f} masks/s** ({sc['masks_per_call']} masks per call; max |difference| "
                  f"against `score_masks` {sc['max_abs_diff_vs_score_masks']:.1e})", ""]
    for name, r in (report.get("latency") or {}).items():
        wall = r["latency"]["wall"]
        lines.append(f"- latency table, {name} shape on {r['device']}: median relative error "
                     f"{100 * wall['median_error']:.1f} % (max {100 * wall['max_error']:.1f} %) on "
                     f"{len(r['masks'])} held-out masks (target 10 %); Spearman rho(MFLOPs, measured latency) {wall['rho_mflops']:.3f}")
    return "\n".join(lines)


def run_latency(args, device: torch.device, say) -> dict:
    """Issue 21 on this device: ``bench_latency``'s tables (latency and peak memory, fitted on the
    design masks) against ``--latency-masks`` held-out measured masks per shape, one pass."""
    import bench_latency

    ns = bench_latency.build_parser().parse_args(
        ["--shapes", args.latency_shapes, "--masks", str(args.latency_masks), "--device", str(device), "--no-retest"])
    bench_latency.resolve_clocks(ns)
    out = {}
    for name in [s for s in ns.shapes.split(",") if s]:
        r = bench_latency.summarize_shape(bench_latency.run_shape(name, ns))
        out[name] = r
        wall = r["latency"]["wall"]
        say(f"latency table {name} on {r['device']}: median error {100 * wall['median_error']:.1f} % "
            f"(max {100 * wall['max_error']:.1f} %) on {len(r['masks'])} held-out masks; "
            f"rho(MFLOPs, latency) {wall['rho_mflops']:.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}, compile_bf16")
    parser.add_argument("--compile", action="store_true", help="also time compile_bf16 (torch.compile)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--samples", type=int, default=8192, help="training samples (device-resident; on the host for loop)")
    parser.add_argument("--score-samples", type=int, default=4659, help="MOSEI's test split size")
    parser.add_argument("--score-masks", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model and data, 3 steps")
    parser.add_argument("--latency-masks", type=int, default=0,
                        help="issue 21: also fit the latency and memory tables on the device and measure this many held-out "
                             "masks per shape (bench_latency's method; 0: skip)")
    parser.add_argument("--latency-shapes", default="mosei,mfeat", help="bench_latency's shapes for --latency-masks")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device; use --device cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    modes = [m for m in args.modes.split(",") if m] + (["compile_bf16"] if args.compile else [])
    info = _common.machine_info(gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    training = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for mode in modes:
            result = run_mode(args, mode, batch_size, device)
            training.append(result)
            say(f"{mode:>22} batch {batch_size:>4}: " + (f"skipped ({result['skipped']})" if "skipped" in result
                else f"{result['samples_per_s']:>10,.0f} samples/s  {result['step_ms']:.2f} ms/step"))
    scoring = run_scoring(args, device)
    say(f"cached scoring k=6: {scoring['masks_per_s']:,.0f} masks/s (max diff {scoring['max_abs_diff_vs_score_masks']:.1e})")
    targets = {}
    for batch_size, target in TARGETS.items():  # judged on mro-search train's own step only
        rows = [r for r in training if r["batch_size"] == batch_size and "samples_per_s" in r and r["mode"] in TRAIN_MODES]
        if rows:
            best = max(rows, key=lambda r: r["samples_per_s"])
            targets[batch_size] = {"target": target, "best_mode": best["mode"],
                                   "best_samples_per_s": best["samples_per_s"],
                                   "verdict": "MET" if best["samples_per_s"] >= target else "NOT MET"}
    settings = {k: getattr(args, k) for k in ("device", "batch_sizes", "steps", "warmup", "width", "heads",
                                              "length", "samples", "quick")} | {"modes": modes}
    report = {"benchmark": "bench_gpu", "settings": settings, "machine": info, "training": training,
              "targets": targets, "scoring": scoring}
    if args.latency_masks:
        report["latency"] = run_latency(args, device, say)
    stem = f"bench_gpu{'_quick' if args.quick else ''}"
    _common.write_result(Path(args.out), stem, report, markdown(report))
    if args.json:
        print(json.dumps(report, default=float))
    else:
        for b, t in targets.items():
            print(f"batch {b}: best {t['best_samples_per_s']:,.0f} samples/s ({t['best_mode']}), "
                  f"target {t['target']:,}: {t['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
