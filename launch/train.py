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
    from vjepa.train.config import check
    from vjepa.train.experiment import format_table, run_experiment

    check(cfg)
    run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir)
    if cfg.launcher.name == "slurm":
        from launch.slurm import submit, wait

        job = submit(cfg, run_dir)
        if cfg.launcher.wait:
            print(format_table(wait(job)))
        return
    if cfg.launcher.name != "local":
        raise ValueError(f"config key launcher.name: {cfg.launcher.name!r} is not local or slurm")
    run_experiment(cfg, run_dir)


if __name__ == "__main__":
    main()
