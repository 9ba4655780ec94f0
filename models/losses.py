r"""Losses for TSSD training: pure functions of logits and targets.

Shapes: logits are time-first ``[T, B, C]`` (``T`` may differ between student and teacher),
targets ``[B]`` int64 class indices. Every loss returns a scalar tensor.

TSSD (arXiv 2406.07862): the same network run with the inference length :math:`T_s` is the
*student*; run with a longer :math:`T_t > T_s` it is the temporal *teacher*; weak classifiers at
intermediate stages are spatial *students* of the final output:

.. math::
    \mathcal{L} = \mathcal{L}_\text{task}(z_S) + \lambda_T\,\mathcal{L}_\text{task}(z_T)
        + \alpha\,\mathcal{L}_\text{tsd}(z_S, z_T) + \beta\,\mathcal{L}_\text{ssd}(z_W, z_S \text{ or } z_T)
        + \lambda_W\,\mathcal{L}_\text{task}(z_W)

with :math:`\lambda_T` = ``teacher_ce`` (0 gives the paper's formula as written,
:math:`\mathcal{L}_\text{task} + \alpha\mathcal{L}_\text{tsd} + \beta\mathcal{L}_\text{ssd}`) and
:math:`\lambda_W` = ``weak_ce``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

__all__ = ["TASK_LOSSES", "METHODS", "KD_ON", "SSD_TARGETS", "task_loss", "kd_loss", "tssd_loss"]


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


#: Where the distillation terms compare outputs (see :func:`kd_loss`).
KD_ON = ("mean", "per_step")


def _align_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's steps averaged over each student step's time window: ``[T_t, B, C]`` -> ``[T_s, B, C]``.

    Step ``s`` of ``T_s`` covers the same time as teacher steps ``s*k .. s*k + k - 1`` with ``k = T_t / T_s``
    (equal time bins, or each student frame repeated ``k`` times); ``T_t`` must be a multiple of ``T_s``."""
    T_s, T_t = student_logits.shape[0], teacher_logits.shape[0]
    if T_t % T_s:
        raise ValueError(f"per-step KD pairs each of the student's {T_s} steps with T_t / T_s teacher steps: "
                         f"T_t = {T_t} must be a multiple of T_s = {T_s}")
    return teacher_logits.unflatten(0, (T_s, T_t // T_s)).mean(1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau_kd: float = 2.0,
            on: str = "mean") -> torch.Tensor:
    r"""Hinton KD between two runs' logits.

    ``on="mean"`` (time-averaged logits):

    .. math::
        \tau^2\,\frac{1}{B}\sum_b \mathrm{KL}\Big(\mathrm{softmax}(\bar z^T_b/\tau)\;\Big\|\;
        \mathrm{softmax}(\bar z^S_b/\tau)\Big), \qquad \bar z = \tfrac{1}{T}\sum_t z_t

    ``on="per_step"``: the same KL per student step :math:`s`, against the teacher's logits averaged over the
    :math:`k = T_t/T_s` steps that cover the same time, then averaged over the :math:`T_s` steps:
    :math:`\tau^2\,\tfrac{1}{T_s}\sum_s \tfrac{1}{B}\sum_b \mathrm{KL}(\mathrm{softmax}(\tilde z^T_{s,b}/\tau)
    \,\|\, \mathrm{softmax}(z^S_{s,b}/\tau))`, :math:`\tilde z^T_s = \tfrac1k\sum_{j<k} z^T_{sk+j}`
    (``T_t`` a multiple of ``T_s``). When every step of each run is the same, both kinds agree.

    Shapes: ``student_logits`` ``[T_s, B, C]``, ``teacher_logits`` ``[T_t, B, C]`` -> scalar.
    Gradients flow into whichever inputs require them: detach the teacher to treat it as fixed.
    Zero iff the compared distributions agree.
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
    if on == "mean":
        log_p_s = F.log_softmax(student_logits.mean(0) / tau_kd, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.mean(0) / tau_kd, dim=-1)
    elif on == "per_step":  # [T_s * B, C] rows: batchmean over them is the mean over steps of each step's KL
        log_p_s = F.log_softmax(student_logits.flatten(0, 1) / tau_kd, dim=-1)
        log_p_t = F.log_softmax(_align_teacher(student_logits, teacher_logits).flatten(0, 1) / tau_kd, dim=-1)
    else:
        raise ValueError(f"unknown KD kind {on!r}; choose one of {list(KD_ON)}")
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (tau_kd * tau_kd)


class _RunOutput(Protocol):
    """What the loss needs from a network run (``models.nets.Output`` fits)."""

    @property
    def logits(self) -> torch.Tensor: ...

    @property
    def weak(self) -> Mapping[str, torch.Tensor]: ...


class MethodSpec(NamedTuple):
    uses_teacher: bool  # the T_t run and its task loss
    temporal_kd: bool  # the temporal SD term (alpha); needs the teacher run
    spatial: bool  # the weak-classifier SD term (beta)


#: Training methods by name (see :func:`tssd_loss`).
METHODS: dict[str, MethodSpec] = {
    "baseline": MethodSpec(uses_teacher=False, temporal_kd=False, spatial=False),
    "multi_T": MethodSpec(uses_teacher=True, temporal_kd=False, spatial=False),  # the control: both CEs, no KD
    "tsd": MethodSpec(uses_teacher=True, temporal_kd=True, spatial=False),
    "ssd": MethodSpec(uses_teacher=False, temporal_kd=False, spatial=True),
    "tssd": MethodSpec(uses_teacher=True, temporal_kd=True, spatial=True),
}

#: What the spatial SD term distils the weak classifiers towards (see :func:`tssd_loss`).
SSD_TARGETS = ("student", "teacher")


def tssd_loss(
    student: _RunOutput,
    target: torch.Tensor,
    *,
    teacher: _RunOutput | None = None,
    method: str = "tssd",
    alpha: float = 1.0,
    beta: float = 1.0,
    teacher_ce: float = 1.0,
    weak_ce: float = 0.0,
    tau_kd: float = 2.0,
    kd_on: str = "mean",
    ssd_target: str = "student",
    task_kind: str = "ce",
    tet_lambda: float = 0.0,
    teacher_grad: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""TSSD objective and its ablations.

    .. math::
        \mathcal{L} = \mathcal{L}_\text{task}(z_S) + [\lambda_T\,\mathcal{L}_\text{task}(z_T)]_\text{teacher}
        + [\alpha\,\mathrm{KD}_\tau(z_S, z_T)]_\text{temporal}
        + [\beta\,\overline{\mathrm{KD}_\tau(z_W, \mathrm{sg}(z_S \text{ or } z_T))}]_\text{spatial}
        + \lambda_W\,\overline{\mathcal{L}_\text{task}(z_W)}

    method: ``baseline`` (task loss of the student only), ``multi_T`` (student and teacher task losses, no
    distillation: the control for "tsd is multi-T training plus KD"), ``tsd`` (teacher and temporal terms),
    ``ssd`` (spatial term), ``tssd`` (all). :math:`\lambda_T` = ``teacher_ce`` (0: the paper's formula
    :math:`\mathcal{L}_\text{task} + \alpha\mathcal{L}_\text{tsd} + \beta\mathcal{L}_\text{ssd}`; the teacher's
    task loss is then still reported, without gradient), :math:`\lambda_W` = ``weak_ce``.
    ``z_S = student.logits`` ``[T_s, B, C]``, ``z_T = teacher.logits`` ``[T_t, B, C]`` (needed by every method
    with the teacher run, and by ``ssd_target="teacher"``; ignored otherwise), ``z_W`` = each of ``student.weak``
    ``[T_s, B, C]`` (averaged over heads; needed by ssd/tssd and by ``weak_ce > 0``). ``sg`` = stop-gradient: the
    spatial target (``ssd_target``: the student's or the teacher's final output) is detached.
    ``teacher_grad=False`` also detaches ``z_T`` inside the temporal KD term (the teacher still learns from its
    own task loss). ``kd_on``: both KD terms on time-averaged logits (``mean``) or per student step
    (``per_step``, see :func:`kd_loss`). ``target`` ``[B]`` int64.

    Returns ``(total, parts)``; ``parts`` maps each computed term (unweighted) and ``"total"`` to
    a float, fetched from the device in one transfer.
    """
    try:
        spec = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}") from None
    if ssd_target not in SSD_TARGETS:
        raise ValueError(f"unknown ssd_target {ssd_target!r}; choose one of {list(SSD_TARGETS)}")
    needs_teacher = spec.uses_teacher or (spec.spatial and ssd_target == "teacher")
    if needs_teacher and teacher is None:
        raise ValueError(f"method {method!r} (ssd_target={ssd_target!r}) needs the teacher run (teacher=...)")
    terms: dict[str, torch.Tensor] = {}
    total = terms["task_student"] = task_loss(student.logits, target, task_kind, tet_lambda=tet_lambda)
    if spec.uses_teacher:
        if teacher_ce != 0.0:
            terms["task_teacher"] = task_loss(teacher.logits, target, task_kind, tet_lambda=tet_lambda)
            total = total + teacher_ce * terms["task_teacher"]
        else:  # not part of the objective: reported only
            with torch.no_grad():
                terms["task_teacher"] = task_loss(teacher.logits, target, task_kind, tet_lambda=tet_lambda)
    if spec.temporal_kd:
        teacher_logits = teacher.logits if teacher_grad else teacher.logits.detach()
        terms["tsd"] = kd_loss(student.logits, teacher_logits, tau_kd, kd_on)
        total = total + alpha * terms["tsd"]
    if spec.spatial or weak_ce != 0.0:
        if not student.weak:
            raise ValueError(f"method {method!r} with weak_ce={weak_ce} needs weak classifier outputs (student.weak)")
        weak = list(student.weak.values())
        if spec.spatial:
            target_logits = (teacher.logits if ssd_target == "teacher" else student.logits).detach()
            terms["ssd"] = torch.stack([kd_loss(z_w, target_logits, tau_kd, kd_on) for z_w in weak]).mean()
            total = total + beta * terms["ssd"]
        if weak_ce != 0.0:
            terms["weak_task"] = torch.stack([task_loss(z_w, target, task_kind, tet_lambda=tet_lambda)
                                              for z_w in weak]).mean()
            total = total + weak_ce * terms["weak_task"]
    terms["total"] = total
    values = torch.stack([v.detach().float() for v in terms.values()]).tolist()
    return total, dict(zip(terms.keys(), values))
