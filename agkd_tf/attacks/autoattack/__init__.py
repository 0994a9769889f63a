"""AutoAttack, standard L-inf, natively in TensorFlow 2 (Croce & Hein, ICML 2020).

F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020; FAB: Croce & Hein, ICML 2020; Square: Andriushchenko et al.,
ECCV 2020. Written after the official fra31/auto-attack code; each module states where it
deviates from it.

  aa = AutoAttack(lambda x: network(x, training=False)['logits'], eps=8 / 255)
  x_adv, report = aa.run(x_test, y_test, batch_size=250)

The components are usable on their own: `apgd_attack`, `apgd_targeted`, `fab_attack`,
`square_attack`, and the `checks`.
"""

from agkd_tf.attacks.autoattack import checks
from agkd_tf.attacks.autoattack.apgd import ApgdResult
from agkd_tf.attacks.autoattack.apgd import apgd_attack
from agkd_tf.attacks.autoattack.apgd import apgd_single_run
from agkd_tf.attacks.autoattack.apgd import apgd_targeted
from agkd_tf.attacks.autoattack.apgd import checkpoint_schedule
from agkd_tf.attacks.autoattack.apgd import checkpoints
from agkd_tf.attacks.autoattack.apgd import dlr_loss
from agkd_tf.attacks.autoattack.apgd import dlr_loss_targeted
from agkd_tf.attacks.autoattack.apgd import step_size_decision
from agkd_tf.attacks.autoattack.autoattack import VERSIONS
from agkd_tf.attacks.autoattack.autoattack import AutoAttack
from agkd_tf.attacks.autoattack.fab import fab_attack
from agkd_tf.attacks.autoattack.fab import fab_single_run
from agkd_tf.attacks.autoattack.fab import projection_linf
from agkd_tf.attacks.autoattack.square import p_selection
from agkd_tf.attacks.autoattack.square import square_attack
from agkd_tf.attacks.autoattack.square import square_side
from agkd_tf.attacks.autoattack.square import square_single_run

__all__ = [
    'ApgdResult', 'AutoAttack', 'VERSIONS', 'apgd_attack', 'apgd_single_run', 'apgd_targeted',
    'checkpoint_schedule', 'checkpoints', 'checks', 'dlr_loss', 'dlr_loss_targeted', 'fab_attack',
    'fab_single_run', 'p_selection', 'projection_linf', 'square_attack', 'square_side',
    'square_single_run', 'step_size_decision',
]
