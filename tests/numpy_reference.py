"""A float64 NumPy re-implementation of SPEC.md, written from the text alone.

It loops over leaves and steps in plain Python and shares no code with the
package, so agreement between the two is evidence for both.
"""

import math
from collections.abc import Callable
from collections.abc import Sequence

import numpy as np


def count_of(fraction: float, n: int) -> int:
  """``ceil(fraction * n)``, where a product within float32 rounding
  (2**-22, relative) of an integer counts as that integer."""
  wanted = fraction * n
  nearest = round(wanted)
  if abs(wanted - nearest) <= 2.0**-22 * wanted:
    return nearest
  return math.ceil(wanted)


def buffer_size(density: float, n: int) -> int:
  if n == 0:
    return 0
  return max(1, min(n, count_of(density, n)))


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
  """Sorted flat indices of the ``count`` lowest scores, ties to lower index."""
  order = np.argsort(scores, kind="stable")
  return np.sort(order[:count])


def run(
  params: dict[str, np.ndarray],
  grads: Sequence[dict[str, np.ndarray]],
  learning_rate: Callable[[int], float],
  density: float,
  mask_interval: int,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  weight_decay: float = 0.0,
  density_schedule: Callable[[int], float] | None = None,
  density_interval: int | None = None,
  moments: str = "remap",
  select: str = "smallest",
  excluded: Sequence[str] = (),
  block_size: int | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
  """Runs NanoAdam for ``len(grads)`` steps in float64.

  With ``block_size``, each contiguous block of the flattened tensor (the
  last may be shorter) selects on its own, with a per-block buffer of
  ``buffer_size(density, min(block_size, n))`` entries.

  Returns the final params and, per step, the updates that were applied.
  """
  theta = {name: np.asarray(p, np.float64).copy() for name, p in params.items()}
  # Per leaf: dict from flat index to [mu, nu]; the selected set.
  moments_of = {name: {} for name in theta}
  selected = {name: np.zeros(0, np.int64) for name in theta}
  dense_mu = {name: np.zeros_like(p) for name, p in theta.items()}
  dense_nu = {name: np.zeros_like(p) for name, p in theta.items()}
  last_selection = 0
  history = []
  for t, grad in enumerate(grads):
    reselect = t % mask_interval == 0 or (
      density_schedule is not None and t % density_interval == 0
    )
    if reselect:
      last_selection = t
    c_dense = t + 1
    c_sparse = t - last_selection + 1 if moments == "reset" else t + 1
    lr = learning_rate(t)
    step_updates = {}
    for name, p in theta.items():
      g = np.asarray(grad[name], np.float64)
      if name in excluded:
        mu = b1 * dense_mu[name] + (1 - b1) * g
        nu = b2 * dense_nu[name] + (1 - b2) * g * g
        dense_mu[name], dense_nu[name] = mu, nu
        mu_hat = mu / (1 - b1**c_dense)
        nu_hat = nu / (1 - b2**c_dense)
        direction = mu_hat / (np.sqrt(nu_hat + eps_root) + eps)
        step_updates[name] = -lr * (direction + weight_decay * p)
        continue
      flat_p, flat_g = p.reshape(-1), g.reshape(-1)
      n = flat_p.size
      row = n if block_size is None else max(1, min(block_size, n))
      k = buffer_size(density, row)
      if reselect and k:
        k_t = k
        if density_schedule is not None:
          read_at = t - t % density_interval
          fraction = min(float(density_schedule(read_at)), density)
          k_t = int(np.clip(count_of(fraction, row), 1, k))
        if select == "smallest":
          scores = np.abs(flat_p)
        elif select == "largest":
          scores = -np.abs(flat_p)
        else:
          raise NotImplementedError(select)
        chosen = np.concatenate(
          [
            start + lowest(scores[start : start + row], k_t)
            for start in range(0, n, row)
          ]
        )
        old = moments_of[name] if moments == "remap" else {}
        moments_of[name] = {int(i): old.get(int(i), [0.0, 0.0]) for i in chosen}
        selected[name] = chosen
      update = np.zeros(n)
      for i in selected[name]:
        mu, nu = moments_of[name][int(i)]
        mu = b1 * mu + (1 - b1) * flat_g[i]
        nu = b2 * nu + (1 - b2) * flat_g[i] ** 2
        moments_of[name][int(i)] = [mu, nu]
        mu_hat = mu / (1 - b1**c_sparse)
        nu_hat = nu / (1 - b2**c_sparse)
        direction = mu_hat / (math.sqrt(nu_hat + eps_root) + eps)
        update[i] = -lr * (direction + weight_decay * flat_p[i])
      step_updates[name] = update.reshape(p.shape)
    for name in theta:
      theta[name] = theta[name] + step_updates[name]
    history.append(step_updates)
  return theta, history
