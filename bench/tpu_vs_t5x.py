"""Our train step against T5X's network, compiled for a TPU slice on this (CPU) host.

    JAX_PLATFORMS=cpu python bench/tpu_vs_t5x.py --t5x_dir PATH/TO/t5x [--topology v5e:4x4]
        [--meshes 16x1,4x4] [--which ours,t5x] [--float32_attention_logits] [--dropout 0.1]
        [--rules standard|fsdp] [--layers N]

Both sides: T5 v1.1 base, bfloat16 activations, dropout 0.1, batch 256 of 512/128 tokens, optax
Adafactor (`optimizers.make_optimizer`), cross-entropy + z-loss 1e-4, T5X's standard logical-axis
rules (`partitioning.STANDARD_RULES`), the same mesh (`partitioning.make_mesh` over the slice's
devices). Ours is `step.build_programs` (what `dsbs train` runs). The anchor is T5X's own
`t5x/examples/t5/network.py` and `layers.py`, read from a T5X checkout you name with --t5x_dir
(nothing of T5X is installed or kept: the two files are copied into a temporary package for the
run, with network.py's `from t5x.examples.t5 import layers` pointed at the copy). Prints, per
mesh, per-device arguments and temp (GiB) and the collectives (all-reduce / all-gather /
all-to-all) of each compile.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from dsbs_jax import weighting  # noqa: E402
from dsbs_jax.model import t5  # noqa: E402
from dsbs_jax.train import aot, losses, optimizers, partitioning  # noqa: E402
from dsbs_jax.train import plan as plan_lib  # noqa: E402
from dsbs_jax.train import step as step_lib  # noqa: E402

SIZES = {
    "base": dict(vocab_size=32128, emb_dim=768, num_heads=12, num_encoder_layers=12,
                 num_decoder_layers=12, head_dim=64, mlp_dim=2048),
    # The paper's largest student (compile it with --layers 2 for its collectives in minutes).
    "xxl": dict(vocab_size=32128, emb_dim=4096, num_heads=64, num_encoder_layers=24,
                num_decoder_layers=24, head_dim=64, mlp_dim=10240),
    # A quick check of the same structure (seconds to compile instead of minutes).
    "tiny": dict(vocab_size=512, emb_dim=128, num_heads=4, num_encoder_layers=2,
                 num_decoder_layers=2, head_dim=32, mlp_dim=256),
}  # fmt: skip
BASE = SIZES["base"]
BATCH, ENC, DEC, Z_LOSS = 256, 512, 128, 1e-4
DROPOUT = 0.1


def load_t5x_network(t5x_dir: str):
    """T5X's network module, from network.py + layers.py of the checkout (a git repository or a
    plain folder) copied into a temporary package."""
    rel = "t5x/examples/t5"
    root = pathlib.Path(t5x_dir)

    def read(name: str) -> str:
        path = root / rel / name
        if path.exists():
            return path.read_text()
        shown = subprocess.run(
            ["git", "--git-dir", str(root), "show", f"HEAD:{rel}/{name}"],
            capture_output=True, text=True,
        )  # fmt: skip
        if shown.returncode:
            sys.exit(
                f"tpu_vs_t5x: --t5x_dir {t5x_dir}: no {rel}/{name} there (give a T5X checkout or "
                "its git folder, or --which ours)"
            )
        return shown.stdout

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="t5x_anchor_"))
    atexit.register(shutil.rmtree, tmp, True)  # the copy is imported; nothing is left behind
    pkg = tmp / "t5x_anchor"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text(read("layers.py"))
    network = read("network.py").replace(
        "from t5x.examples.t5 import layers", "from t5x_anchor import layers"
    )
    (pkg / "network.py").write_text(network)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("t5x_anchor.network")


def t5x_report(network, mesh, rules, float32_logits: bool, topology: str) -> aot.CompileReport:
    """T5X's network under the same optimizer, loss and mesh as ours, compiled for the slice."""
    cfg = network.T5Config(
        **BASE, mlp_activations=("gelu", "linear"), dropout_rate=DROPOUT,
        logits_via_embedding=False, dtype=jnp.bfloat16, float32_attention_logits=float32_logits,
    )  # fmt: skip
    model = network.Transformer(cfg)
    tx = optimizers.make_optimizer(optax.constant_schedule(1e-3))

    with mesh, nn.logical_axis_rules(rules):

        def init(rng):
            enc, dec = jnp.ones((1, ENC), jnp.int32), jnp.ones((1, DEC), jnp.int32)
            return model.init({"params": rng}, enc, dec, dec, enable_dropout=False)

        variables = flax.core.unfreeze(jax.eval_shape(init, jax.random.PRNGKey(0)))
        axes = flax.core.unfreeze(nn.partitioning.get_axis_names(variables["params_axes"]))
        param_shardings = nn.logical_to_mesh_sharding(axes, mesh, rules)
        params = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            variables["params"], param_shardings,
        )  # fmt: skip
        opt_shardings = partitioning.on_mesh(
            jax.jit(tx.init).lower(params).compile().output_shardings, mesh
        )
        opt = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            jax.eval_shape(tx.init, params), opt_shardings,
        )  # fmt: skip

        def train_step(params, opt_state, step, batch, dropout_key):
            rng = jax.random.fold_in(dropout_key, step)

            def loss_fn(p):
                with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # as in our step
                    logits = apply(p)
                tok = losses.token_losses(logits, batch["decoder_target_tokens"], Z_LOSS, True)
                return weighting.weighted_loss(
                    tok, batch["decoder_loss_weights"], batch["decoder_task_ids"], 1, "exact"
                )

            def apply(p):
                return model.apply(
                    {"params": p},
                    batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                    batch["decoder_target_tokens"], batch["encoder_segment_ids"],
                    batch["decoder_segment_ids"], batch["encoder_positions"],
                    batch["decoder_positions"], enable_dropout=True, rngs={"dropout": rng},
                )  # fmt: skip

            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            aux["loss"], aux["grad_norm"] = loss, optax.tree.norm(grads)
            return optax.apply_updates(params, updates), opt_state, aux

        step = jax.jit(
            train_step,
            in_shardings=(param_shardings, opt_shardings, None, partitioning.data_sharding(mesh),
                          None),
            out_shardings=(param_shardings, opt_shardings, None),
            donate_argnums=(0, 1),
        )  # fmt: skip
        programs = step_lib.Programs(
            model, param_shardings, params, opt_shardings, opt, None, None, step
        )
        config = t5.T5Config(
            **BASE, dtype="bfloat16", float32_attention_logits=float32_logits, dropout_rate=DROPOUT
        )
        lowered = aot.lower_step(programs, mesh, BATCH, ENC, DEC)
        report = aot.compile_lowered(lowered, programs, mesh, BATCH, ENC, DEC, topology, config)
        report.kernels = "t5x"
        return report


def ours_report(mesh, rules, float32_logits: bool, topology: str) -> aot.CompileReport:
    config = t5.T5Config(
        **BASE, dtype="bfloat16", float32_attention_logits=float32_logits, dropout_rate=DROPOUT
    )
    schedule = optax.constant_schedule(1e-3)
    tx = optimizers.make_optimizer(schedule)
    plan = plan_lib.StepPlan(config, tx, schedule, 1, "exact", Z_LOSS, BATCH, (ENC, DEC))
    return aot.compile_plan(plan, mesh, rules, topology)


def row(name: str, r: aot.CompileReport) -> str:
    c = r.collectives
    return (
        f"| {name} | {r.mesh['data']} x {r.mesh['model']} | {r.attention_logits} | "
        f"{r.argument_bytes / aot.GiB:.3f} | {r.temp_bytes / aot.GiB:.3f} | "
        f"{c['all-reduce']['count']} / {c['all-gather']['count']} / {c['all-to-all']['count']} | "
        f"{c['reduce-scatter']['count']} | {r.compile_seconds:.0f} s |"
    )


def main() -> None:
    global BASE, BATCH, ENC, DEC, DROPOUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--t5x_dir", default=os.environ.get("T5X_DIR"))
    p.add_argument("--topology", default="v5e:4x4")
    p.add_argument("--meshes", default="16x1,4x4", help="data x model shapes, comma-separated")
    p.add_argument("--which", default="ours,t5x")
    p.add_argument("--float32_attention_logits", action="store_true")
    p.add_argument("--size", default="base", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--dropout", type=float, default=DROPOUT, help="dropout rate of both steps")
    p.add_argument("--lengths", default=f"{ENC},{DEC}", help="encoder,decoder lengths")
    p.add_argument(
        "--layers", type=int, default=0, help="encoder and decoder layers (0: the size's)"
    )
    p.add_argument(
        "--rules",
        default="standard",
        choices=("standard", "fsdp"),
        help="logical-axis rules of both steps (fsdp: meshes/fsdp.gin's)",
    )
    args = p.parse_args()
    BASE, BATCH, DROPOUT = SIZES[args.size], args.batch, args.dropout
    if args.layers:
        BASE = dict(BASE, num_encoder_layers=args.layers, num_decoder_layers=args.layers)
    ENC, DEC = (int(n) for n in args.lengths.split(","))
    which = args.which.split(",")
    if "t5x" in which and not args.t5x_dir:
        p.error("--t5x_dir (or $T5X_DIR) is needed for the T5X anchor")
    network = load_t5x_network(args.t5x_dir) if "t5x" in which else None
    rules = partitioning.logical_axis_rules(args.rules)
    print(f"T5 v1.1 {args.size} ({BASE['num_encoder_layers']}+{BASE['num_decoder_layers']} "
          f"layers), bfloat16, dropout {DROPOUT}, batch {BATCH} of {ENC}/{DEC}, {args.topology}, "
          f"{args.rules} rules")  # fmt: skip
    print("| step | mesh | attention logits | arguments GiB | temp GiB | "
          "all-reduce / all-gather / all-to-all | reduce-scatter | compile |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.meshes.split(","):
        _, model_axis = (int(n) for n in shape.split("x"))
        mesh = aot.slice_mesh(args.topology, model_axis)
        for name in which:
            if name == "ours":
                r = ours_report(mesh, rules, args.float32_attention_logits, args.topology)
            else:
                r = t5x_report(network, mesh, rules, args.float32_attention_logits, args.topology)
            print(row(name, r), flush=True)


if __name__ == "__main__":
    main()
