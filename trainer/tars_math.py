"""The TARS algorithm as pure functions (paper section 3; docs/original.md §2.3, §2.7, §3.4, §3.5).

Kept apart from the trainer glue, like ms-swift's ``swift/rl_core``: pairing of speech and text
rollouts by question key, mean-pooled hidden-state cosine (representation alignment), the alignment
reward layout, the total reward and the modality-specific advantages. Every function works on the
rollouts of the whole (gathered) generation batch, in one global order, so results do not depend on
how the batch is split over ranks or micro-batches.

Shapes: N rollouts, L layers, D hidden size, B batch rows, T tokens, F reward functions.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

SPEECH, TEXT = 'speech', 'text'


def assign_modalities(keys: Sequence[str], prompt_modality: str) -> List[str]:
    """Modality of each rollout: ``mixed`` alternates speech/text over a question's occurrences.

    The j-th occurrence (in global order) of a question key is speech when j is even, text when odd, so
    a group of K rollouts holds K/2 of each whatever the batch geometry (docs/original.md §2.3 interleaves by
    local index, which assumes one group per rank). ``a`` is all speech, ``t`` all text.
    """
    if prompt_modality == 'a':
        return [SPEECH] * len(keys)
    if prompt_modality == 't':
        return [TEXT] * len(keys)
    if prompt_modality != 'mixed':
        raise ValueError(f'prompt_modality must be a, t or mixed, got {prompt_modality!r}')
    seen: Dict[str, int] = {}
    out = []
    for key in keys:
        j = seen.get(key, 0)
        seen[key] = j + 1
        out.append(SPEECH if j % 2 == 0 else TEXT)
    return out


def masked_mean_pool(hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked tokens: hidden [B, T, D], token_mask [B, T] -> [B, D] float32.

    A row without masked tokens gives NaN (an empty completion has no state to compare).
    """
    mask = token_mask.to(hidden.device, torch.float32).unsqueeze(-1)
    total = (hidden.float() * mask).sum(1)
    count = mask.sum(1)
    return total / count  # 0/0 -> NaN for empty rows


def layer_indices(num_layers: int, target_layers: Optional[Sequence[int]]) -> List[int]:
    """0-based rows of a pooled [L, D] state for 1-based ``target_layers`` (None: all, the paper's default)."""
    if not target_layers:
        return list(range(num_layers))
    bad = [l for l in target_layers if not 1 <= l <= num_layers]
    if bad:
        raise ValueError(f'target layers {bad} out of range 1..{num_layers}')
    return [l - 1 for l in target_layers]


def pooled_cosine(a: torch.Tensor, b: torch.Tensor, target_layers: Optional[Sequence[int]] = None) -> float:
    """Representation alignment of two rollouts: mean over layers of cos(a_l, b_l); a, b [L, D].

    docs/original.md §3.5: mean-pool each layer over completion tokens first, then cosine, then average layers.
    """
    rows = layer_indices(a.shape[0], target_layers)
    cos = torch.nn.functional.cosine_similarity(a[rows].float(), b[rows].float(), dim=-1, eps=1e-8)
    return float(cos.mean())


def pair_with_correct_text(keys: Sequence[str], modalities: Sequence[str],
                           correct: Sequence[bool]) -> List[Optional[int]]:
    """Partner of each speech rollout: a correct text rollout of the same question, round robin.

    The k-th speech rollout of a question (global order) pairs with its question's correct text
    rollouts [k mod K] (docs/original.md §3.4/§3.5, matched by key instead of by batch position). Text rollouts
    and speech rollouts whose question has no correct text get None.
    """
    pool: Dict[str, List[int]] = {}
    for i, (key, mod) in enumerate(zip(keys, modalities, strict=True)):
        if mod == TEXT and correct[i]:
            pool.setdefault(key, []).append(i)
    count: Dict[str, int] = {}
    partners: List[Optional[int]] = []
    for key, mod in zip(keys, modalities, strict=True):
        if mod != SPEECH:
            partners.append(None)
            continue
        k = count.get(key, 0)
        count[key] = k + 1
        texts = pool.get(key)
        partners.append(texts[k % len(texts)] if texts else None)
    return partners


def alignment_rewards(keys: Sequence[str], modalities: Sequence[str], partners: Sequence[Optional[int]],
                      score: Callable[[int, int], float]) -> List[float]:
    """Alignment reward of every rollout (docs/original.md §3.4 'Option 1', §3.5).

    Speech: ``score(i, partner)``, or 0.0 when the question has no correct text rollout. Text: the mean
    of its question's speech rewards (NaN ones ignored; 0.0 without speech rollouts), a constant within
    the text half of the group, so it never moves a text advantage.
    """
    out = [0.0] * len(keys)
    per_key: Dict[str, List[float]] = {}
    for i, (key, mod) in enumerate(zip(keys, modalities, strict=True)):
        if mod == SPEECH:
            out[i] = score(i, partners[i]) if partners[i] is not None else 0.0
            per_key.setdefault(key, []).append(out[i])
    for i, (key, mod) in enumerate(zip(keys, modalities, strict=True)):
        if mod == TEXT:
            values = torch.tensor(per_key.get(key, []), dtype=torch.float64)
            out[i] = float(values.nanmean()) if values.numel() and not values.isnan().all() else 0.0
    return out


def total_reward(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over reward functions: [N, F], [F] -> [N].

    Unlike the original's NaN-ignoring sum, a NaN from any function makes the total NaN: the rollout
    then gets advantage 0 (see ``modality_advantages``) instead of a silently partial reward.
    """
    return (rewards_per_func * weights.unsqueeze(0)).sum(dim=1)


def group_ids(keys: Sequence[str]) -> torch.Tensor:
    """Integer id per rollout, equal for equal question keys: [N] long."""
    index: Dict[str, int] = {}
    return torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)


def _cell_moments(rewards: torch.Tensor, cell: torch.Tensor):
    """Per-cell count, mean and population variance of the non-NaN rewards: [N] float, [N] long ->
    (valid [N] bool, r [N] with NaN -> 0, count [C], mean [C], var [C]); C = cell.max() + 1."""
    valid = ~torch.isnan(rewards)
    n_cells = int(cell.max()) + 1 if cell.numel() else 0
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    zeros = torch.zeros(n_cells, device=rewards.device)
    count = zeros.clone().index_add_(0, cell, valid.float())
    mean = zeros.clone().index_add_(0, cell, r) / count.clamp(min=1)
    sq = zeros.clone().index_add_(0, cell, r * r)
    var = (sq / count.clamp(min=1) - mean * mean).clamp(min=0)
    return valid, r, count, mean, var


# Where the advantage baselines are taken (TARSConfig.advantage_norm): per (question, modality) cell, the
# paper's; or per question over its speech and text rollouts together (the ablation arm the paper argues
# against, ms-swift's plain GRPO group).
ADVANTAGE_NORMS = ('modality', 'group')


def advantage_cells(groups: torch.Tensor, is_speech: torch.Tensor, norm: str = 'modality') -> torch.Tensor:
    """The cell id of each rollout the advantage baseline is taken over: groups [N] long, is_speech [N] bool
    -> [N] long. ``modality``: one cell per (question, modality), ``groups * 2 + is_speech``; ``group``: one
    cell per question, ``groups`` (speech and text rollouts share one baseline)."""
    if norm not in ADVANTAGE_NORMS:
        raise ValueError(f'advantage_norm must be one of {ADVANTAGE_NORMS}, got {norm!r}')
    groups = groups.long()
    if norm == 'group':
        return groups
    return groups * 2 + is_speech.to(groups.device).long()


def modality_advantages(rewards: torch.Tensor, groups: torch.Tensor, is_speech: torch.Tensor,
                        scale_std: bool = False, eps: float = 1e-4, norm: str = 'modality') -> torch.Tensor:
    """Modality-specific advantages (docs/original.md §2.7): r_i minus the mean reward of the rollouts of the same
    question AND the same modality as i (``norm='group'``: of the same question, both modalities together).

    rewards [N] float (NaN allowed), groups [N] long, is_speech [N] bool -> advantages [N] float32.
    ``scale_std`` divides by that subset's population std + eps, (r - mean) / (std + 1e-4) as the
    original's ``scale_rewards=True`` branch (off by default, as in the original; ms-swift's
    ``--scale_rewards group`` turns it on). NaN rewards are left out of the baselines and get advantage 0.
    """
    rewards = rewards.float()
    groups, is_speech = groups.to(rewards.device), is_speech.to(rewards.device)
    cell = advantage_cells(groups, is_speech, norm)
    valid, r, _, mean, var = _cell_moments(rewards, cell)
    adv = r - mean[cell]
    if scale_std:
        adv = adv / (var.sqrt()[cell] + eps)
    return torch.where(valid, adv, torch.zeros_like(adv))


def reward_std_stats(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6) -> Tuple[float, float]:
    """ms-swift's ``reward_std`` and ``frac_reward_zero_std`` over the groups given: the mean over groups
    of the population std of their non-NaN rewards, and the fraction of groups whose std is ~0 (no
    learning signal). rewards [N] float, groups [N] long (e.g. one id per question, or per question and
    modality) -> (mean std, fraction). Groups without a valid reward are left out; (0.0, 1.0) when none.
    """
    rewards = rewards.float()
    _, _, count, _, var = _cell_moments(rewards, groups.long().to(rewards.device))
    std = var.sqrt()[count > 0]
    if not std.numel():
        return 0.0, 1.0
    return float(std.mean()), float((std <= eps).float().mean())
