"""A reward that is NaN for every completion (registered as ``test_nan``), for the strict-JSON log test:
ms-swift logs its mean as NaN, which must reach logging.jsonl as null."""
from swift.rewards import ORM, orms


class NanReward(ORM):
    def __call__(self, completions, **kwargs):
        return [float('nan')] * len(completions)


orms['test_nan'] = NanReward
