"""Temperature-scaled distillation KL, as in Hinton et al. and the FFL reference code."""

import torch
import torch.nn.functional as F


def distill_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, detach_teacher: bool = True
) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch.

    The teacher is detached unless ``detach_teacher=False`` says it learns from this loss too (OKDDip's
    attention-weighted targets). T² keeps the gradient's scale independent of T (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax((teacher.detach() if detach_teacher else teacher) / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
