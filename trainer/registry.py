"""Registration of TARS with ms-swift's plugin registries (models and templates, ``orms``, ``callbacks_map``,
``TrainerFactory``)."""

from trainer.model_registry import register_models

TRAINER_PATH = 'trainer.grpo_trainer.TARSGRPOTrainer'


def register_with_swift() -> None:
    """Register the presets' models and templates, the TARS rewards, the run-log callback
    (``--callbacks tars_run_logs``), and make ``--rlhf_type grpo`` build ``TARSGRPOTrainer``."""
    # deferred: these import ms-swift and transformers (seconds); trainer.grpo imports this module before
    # it checks its command line, and ms-swift's plugin loader calls this function with ms-swift loaded
    from swift.callbacks import callbacks_map

    from trainer.compat import register_trainer
    from trainer.rewards import register
    from trainer.run_logs import CALLBACK_NAME, RunLogCallback
    callbacks_map[CALLBACK_NAME] = RunLogCallback
    register_models()
    register()
    register_trainer('grpo', TRAINER_PATH)
