"""Registration of TARS with ms-swift's plugin registries (models and templates, ``orms``, ``TrainerFactory``)."""

TRAINER_PATH = 'trainer.grpo_trainer.TARSGRPOTrainer'


def register_with_swift() -> None:
    """Register the presets' models and templates, the TARS rewards, and make ``--rlhf_type grpo`` build
    ``TARSGRPOTrainer``."""
    from trainer.compat import register_trainer
    from trainer.model_registry import register_models
    from trainer.rewards import register
    register_models()
    register()
    register_trainer('grpo', TRAINER_PATH)
