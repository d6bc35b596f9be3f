"""Convert checkpoints: `python -m vjepa.convert SRC DST [--from FORMAT] [--to TARGET]`.

SRC: an official V-JEPA 1 / V-JEPA 2 `.pt`, a Hugging Face VJEPA2 folder, our native export or a trainer
checkpoint (auto-detected). DST: a `.pt` file (default target "native") or a folder (default "hf").
`--verify` reloads DST and compares encoder (and predictor) outputs on a random clip.
"""
from __future__ import annotations

import argparse
import sys

import torch

from vjepa.interop.api import FORMATS, TARGETS, convert, load_pretrained


def _verify(src_model, dst, target: str, load_kwargs: dict) -> float:
    if target in ("vjepa1", "vjepa2"):
        kw = {k: v for k, v in load_kwargs.items()
              if k in ("num_heads", "pred_num_heads", "img_size", "num_frames") and v is not None}
        kw.setdefault("num_heads", src_model.encoder_config["num_heads"])
        if src_model.predictor_config:
            kw.setdefault("pred_num_heads", src_model.predictor_config["num_heads"])
        kw.setdefault("img_size", src_model.encoder_config["img_size"])
        kw.setdefault("num_frames", src_model.encoder_config["num_frames"])
        back = load_pretrained(dst, format=target, **kw)
    else:
        back = load_pretrained(dst)
    e = src_model.encoder_config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, e["in_chans"], e["num_frames"], e["img_size"], e["img_size"], generator=g)
    with torch.no_grad():
        a, b = src_model.encoder(x), back.encoder(x)
        err = (a - b).abs().max().item()
        if src_model.predictor is not None and back.predictor is not None:
            n = a.shape[1]
            perm = torch.randperm(n, generator=g)
            ctx, tgt = perm[: n // 2].sort().values[None], perm[n // 2:].sort().values[None]
            grid = src_model.encoder.grid
            pa = src_model.predictor(a.gather(1, ctx[..., None].expand(-1, -1, a.shape[-1])), ctx, tgt, grid, 1)
            pb = back.predictor(b.gather(1, ctx[..., None].expand(-1, -1, b.shape[-1])), ctx, tgt, grid, 1)
            err = max(err, (pa - pb).abs().max().item())
    return err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vjepa.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--from", dest="fmt", default="auto", choices=("auto", *FORMATS))
    ap.add_argument("--to", default=None, choices=TARGETS,
                    help="default: native for a .pt/.pth DST, hf otherwise")
    ap.add_argument("--key", default=None, help="encoder entry: target_encoder (default) / encoder / teacher ...")
    ap.add_argument("--no-predictor", action="store_true", help="convert the encoder only")
    ap.add_argument("--num-heads", type=int, default=None)
    ap.add_argument("--pred-num-heads", type=int, default=None)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--num-frames", type=int, default=None)
    ap.add_argument("--allow-missing", nargs="*", default=[], metavar="PATTERN",
                    help="glob patterns of known extra / missing keys to accept")
    ap.add_argument("--verify", action="store_true", help="reload DST and compare outputs on a random clip")
    args = ap.parse_args(argv)
    load_kwargs = dict(format=args.fmt, checkpoint_key=args.key, predictor=not args.no_predictor,
                       num_heads=args.num_heads, pred_num_heads=args.pred_num_heads, img_size=args.img_size,
                       num_frames=args.num_frames, allow_missing=args.allow_missing)
    try:
        p, target = convert(args.src, args.dst, to=args.to, **load_kwargs)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(p.summary())
    print(f"wrote {target}: {args.dst}")
    if args.verify:
        err = _verify(p, args.dst, target, load_kwargs)
        print(f"verify: max abs difference {err:.3g}")
        if err > 1e-5:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
