"""Registration of TARS with ms-swift's plugin registries (models and templates, ``orms``, ``callbacks_map``,
``TrainerFactory``)."""

TRAINER_PATH = 'trainer.grpo_trainer.TARSGRPOTrainer'


def register_with_swift() -> None:
    """Register the presets' models and templates, the TARS rewards, the run-log callback
    (``--callbacks tars_run_logs``), and make ``--rlhf_type grpo`` build ``TARSGRPOTrainer``."""
    from swift.callbacks import callbacks_map

    from trainer.compat import register_trainer
    from trainer.run_logs import CALLBACK_NAME, RunLogCallback
    callbacks_map[CALLBACK_NAME] = RunLogCallback
    from trainer.model_registry import register_models
    from trainer.rewards import register
    register_models()
    register()
    register_trainer('grpo', TRAINER_PATH)
