r"""Losses for TSSD training: pure functions of logits and targets.

Shapes: logits are time-first ``[T, B, C]`` (``T`` may differ between student and teacher),
targets ``[B]`` int64 class indices. Every loss returns a scalar tensor.

TSSD (arXiv 2406.07862): the same network run with the inference length :math:`T_s` is the
*student*; run with a longer :math:`T_t > T_s` it is the temporal *teacher*; weak classifiers at
intermediate stages are spatial *students* of the final output:

.. math::
    \mathcal{L} = \mathcal{L}_\text{task}(z_S) + \mathcal{L}_\text{task}(z_T)
        + \alpha\,\mathcal{L}_\text{tsd}(z_S, z_T) + \beta\,\mathcal{L}_\text{ssd}(z_W, z_S)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

__all__ = ["TASK_LOSSES", "METHODS", "task_loss", "kd_loss", "tssd_loss"]


def _check_logits(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Validate ``[T, B, C]`` and return it in float32 at least: reduced-precision (autocast)
    logits would make KL/CE round off (even to slightly negative KL)."""
    if logits.dim() != 3:
        raise ValueError(f"{name} must be [T, B, C] logits, got shape {tuple(logits.shape)}")
    return logits if logits.dtype == torch.float64 else logits.float()


def _ce_on_mean(logits: torch.Tensor, target: torch.Tensor, tet_lambda: float, tet_phi: float) -> torch.Tensor:
    return F.cross_entropy(logits.mean(0), target)


def _tet(logits: torch.Tensor, target: torch.Tensor, tet_lambda: float, tet_phi: float) -> torch.Tensor:
    T = logits.shape[0]
    # Equal batch per step, so the mean over the T*B rows is the mean over t of each step's CE.
    loss = F.cross_entropy(logits.flatten(0, 1), target.repeat(T))
    if tet_lambda != 0.0:
        loss = (1.0 - tet_lambda) * loss + tet_lambda * F.mse_loss(logits, torch.full_like(logits, tet_phi))
    return loss


#: Task losses by name (see :func:`task_loss`).
TASK_LOSSES = {"ce": _ce_on_mean, "tet": _tet}


def task_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    kind: str = "ce",
    *,
    tet_lambda: float = 0.0,
    tet_phi: float = 1.0,
) -> torch.Tensor:
    r"""Classification loss of time-first logits.

    ``"ce"``:  :math:`\mathrm{CE}\big(\tfrac{1}{T}\sum_t z_t,\; y\big)` (rate-decoded output).

    ``"tet"``: TET (Deng et al. 2022)
    :math:`(1-\lambda)\,\tfrac{1}{T}\sum_t \mathrm{CE}(z_t, y) + \lambda\,\tfrac{1}{T}\sum_t
    \mathrm{MSE}(z_t, \phi)`, with :math:`\lambda` = ``tet_lambda`` (default 0: pure per-step CE)
    and :math:`\phi` = ``tet_phi``.

    Shapes: ``logits`` ``[T, B, C]``, ``target`` ``[B]`` int64 -> scalar (batch mean).
    """
    logits = _check_logits("logits", logits)
    try:
        fn = TASK_LOSSES[kind]
    except KeyError:
        raise ValueError(f"unknown task loss {kind!r}; choose one of {sorted(TASK_LOSSES)}") from None
    return fn(logits, target, tet_lambda, tet_phi)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau_kd: float = 2.0) -> torch.Tensor:
    r"""Hinton KD on time-averaged logits.

    .. math::
        \tau^2\,\frac{1}{B}\sum_b \mathrm{KL}\Big(\mathrm{softmax}(\bar z^T_b/\tau)\;\Big\|\;
        \mathrm{softmax}(\bar z^S_b/\tau)\Big), \qquad \bar z = \tfrac{1}{T}\sum_t z_t

    Shapes: ``student_logits`` ``[T_s, B, C]``, ``teacher_logits`` ``[T_t, B, C]`` -> scalar.
    Gradients flow into whichever inputs require them: detach the teacher to treat it as fixed.
    Zero iff the two time-averaged distributions agree.
    """
    student_logits = _check_logits("student_logits", student_logits)
    teacher_logits = _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[1:] != teacher_logits.shape[1:]:
        raise ValueError(
            f"student [T, B, C] = {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
            "must agree in B and C"
        )
    if not tau_kd > 0.0:
        raise ValueError(f"tau_kd must be > 0, got {tau_kd}")
    log_p_s = F.log_softmax(student_logits.mean(0) / tau_kd, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.mean(0) / tau_kd, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (tau_kd * tau_kd)


class _RunOutput(Protocol):
    """What the loss needs from a network run (``models.nets.Output`` fits)."""

    @property
    def logits(self) -> torch.Tensor: ...

    @property
    def weak(self) -> Mapping[str, torch.Tensor]: ...


class MethodSpec(NamedTuple):
    uses_teacher: bool  # the T_t run: its task loss and the temporal SD term
    spatial: bool  # the weak-classifier SD term


#: Training methods by name (see :func:`tssd_loss`).
METHODS: dict[str, MethodSpec] = {
    "baseline": MethodSpec(uses_teacher=False, spatial=False),
    "tsd": MethodSpec(uses_teacher=True, spatial=False),
    "ssd": MethodSpec(uses_teacher=False, spatial=True),
    "tssd": MethodSpec(uses_teacher=True, spatial=True),
}


def tssd_loss(
    student: _RunOutput,
    target: torch.Tensor,
    *,
    teacher: _RunOutput | None = None,
    method: str = "tssd",
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.0,
    tau_kd: float = 2.0,
    task_kind: str = "ce",
    tet_lambda: float = 0.0,
    teacher_grad: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""TSSD objective and its ablations.

    .. math::
        \mathcal{L} = \mathcal{L}_\text{task}(z_S) + [\mathcal{L}_\text{task}(z_T)
        + \alpha\,\mathrm{KD}_\tau(z_S, z_T)]_\text{temporal}
        + [\beta\,\overline{\mathrm{KD}_\tau(z_W, \mathrm{sg}(z_S))}]_\text{spatial}
        + \gamma\,\overline{\mathcal{L}_\text{task}(z_W)}

    method: ``baseline`` (task loss of the student only), ``tsd`` (temporal terms), ``ssd``
    (spatial term), ``tssd`` (both). ``z_S = student.logits`` ``[T_s, B, C]``,
    ``z_T = teacher.logits`` ``[T_t, B, C]`` (needed by tsd/tssd, ignored otherwise),
    ``z_W`` = each of ``student.weak`` ``[T_s, B, C]`` (averaged over heads; needed by ssd/tssd and
    by ``gamma > 0``). ``sg`` = stop-gradient: the spatial target is the student's final output,
    detached. ``teacher_grad=False`` also detaches ``z_T`` inside the temporal KD term (the teacher
    still learns from its own task loss). ``target`` ``[B]`` int64.

    Returns ``(total, parts)``; ``parts`` maps each computed term (unweighted) and ``"total"`` to
    a float, fetched from the device in one transfer.
    """
    try:
        spec = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}") from None
    terms: dict[str, torch.Tensor] = {}
    total = terms["task_student"] = task_loss(student.logits, target, task_kind, tet_lambda=tet_lambda)
    if spec.uses_teacher:
        if teacher is None:
            raise ValueError(f"method {method!r} needs the teacher run (teacher=...)")
        terms["task_teacher"] = task_loss(teacher.logits, target, task_kind, tet_lambda=tet_lambda)
        teacher_logits = teacher.logits if teacher_grad else teacher.logits.detach()
        terms["tsd"] = kd_loss(student.logits, teacher_logits, tau_kd)
        total = total + terms["task_teacher"] + alpha * terms["tsd"]
    if spec.spatial or gamma != 0.0:
        if not student.weak:
            raise ValueError(f"method {method!r} with gamma={gamma} needs weak classifier outputs (student.weak)")
        weak = list(student.weak.values())
        if spec.spatial:
            target_logits = student.logits.detach()
            terms["ssd"] = torch.stack([kd_loss(z_w, target_logits, tau_kd) for z_w in weak]).mean()
            total = total + beta * terms["ssd"]
        if gamma != 0.0:
            terms["weak_task"] = torch.stack([task_loss(z_w, target, task_kind, tet_lambda=tet_lambda) for z_w in weak]).mean()
            total = total + gamma * terms["weak_task"]
    terms["total"] = total
    values = torch.stack([v.detach().float() for v in terms.values()]).tolist()
    return total, dict(zip(terms.keys(), values))
