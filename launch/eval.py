"""`python -m launch.eval checkpoint=PATH data.train=[train.jsonl] data.val=val.jsonl [probe=ssv2] [overrides]`:
attentive-probe evaluation of a frozen encoder (vjepa/eval/run.py), here or as a SLURM job (launcher=slurm).
Writes eval.json and confusion_<label>.png to the run folder.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from vjepa.eval.run import EvalConfig, evaluate

ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


@hydra.main(config_path="../configs", config_name="eval", version_base=None)
def main(cfg) -> None:
    run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir)
    from launch.slurm import launch

    # the same launcher options as training (docs/slurm.md)
    launch(cfg, run_dir, "eval", evaluate, lambda report: f"best top-1: {report['best_top1']}")


if __name__ == "__main__":
    main()
