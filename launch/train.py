"""`python -m launch.train [overrides]`: train an experiment (default: SALT on the embedded dataset).

launcher=local runs in this process (CPU or one GPU; torchrun for several local processes);
launcher=slurm submits the same run through submitit and prints the job id and run directory.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from vjepa.train.config import TrainConfig

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg) -> None:
    from launch.slurm import launch
    from vjepa.train.config import check
    from vjepa.train.experiment import format_table, run_experiment

    check(cfg)
    run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir)
    launch(cfg, run_dir, "train", run_experiment, format_table)


if __name__ == "__main__":
    main()
