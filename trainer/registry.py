"""Registration of TARS with ms-swift's plugin registries (``orms`` and ``TrainerFactory``)."""

TRAINER_PATH = 'trainer.grpo_trainer.TARSGRPOTrainer'


def register_with_swift() -> None:
    """Register the TARS rewards and make ``--rlhf_type grpo`` build ``TARSGRPOTrainer``."""
    from swift.trainers.trainer_factory import TrainerFactory

    from trainer.rewards import register
    register()
    TrainerFactory.TRAINER_MAPPING['grpo'] = TRAINER_PATH
