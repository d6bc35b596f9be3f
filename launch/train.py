"""`python -m launch.train [overrides]`: train an experiment (default: SALT on the embedded dataset)."""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from vjepa.train.config import TrainConfig

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg) -> None:
    from vjepa.train.experiment import run_experiment

    run_dir = cfg.run_dir or HydraConfig.get().runtime.output_dir
    run_experiment(cfg, Path(run_dir))


if __name__ == "__main__":
    main()
