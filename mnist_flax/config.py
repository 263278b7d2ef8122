"""Every configuration key, with its default. `configs/*.py` override from here."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """The full set of keys; a key not defined here is an error on the CLI."""
  c = ml_collections.ConfigDict()
  c.model = 'v36'           # a name in architectures.NETWORKS, 'v36:C1-C2-C3-C4-C5',
                            # or 'torch:PATH.py:CLASS': a PyTorch class from a
                            # file (which runs that file's code; docs/interop.md)
  c.model_kwargs = ''       # torch: models only: CLASS's constructor arguments as
                            # a JSON object, e.g. '{"width": 8}'; '' = none
  c.init = 'torch'          # 'torch': PyTorch's default init; 'flax': Flax's;
                            # 'xavier': Xavier-uniform convs, zero conv biases
  c.precision = 'default'   # 'default' (TF32 convolutions on recent GPUs),
                            # 'float32' (full) or 'bfloat16' (models.PRECISIONS)
  c.bn_momentum = 0.1       # BatchNorm's, as PyTorch's: running statistics
                            # = (1 - m) * running + m * batch, 0 < m <= 1

  c.dataset = 'mnist'       # 'mnist', 'fashion_mnist' or 'kmnist'
  c.data_dir = ''           # folder with the four IDX files; '' = TFDS
  c.tfds_data_dir = ''      # TFDS's own data dir; '' = TFDS's default
  c.verify_checksums = True
  c.train_examples = 0      # use only the first N training images; 0 = all
  c.validation_examples = 0  # N > 0: evaluate on N training images (never
                             # trained on) instead of the test set
  c.validation_split = 'last'  # which: 'last', the last N training images;
                               # 'writers', whole writers, about N digits, half
                               # from each NIST series, as the test set (writers.py)
  c.writers_file = ''       # QMNIST's qmnist-train-labels-idx2-int.gz, the writer
                            # of each training digit; '' = in data_dir
  c.mean = 0.1307           # the seeds' normalisation
  c.std = 0.3081

  c.augment = ml_collections.ConfigDict()
  c.augment.degrees = 0.0      # rotation drawn from [-degrees, degrees]
  c.augment.translate = 0.0    # shift up to this fraction of 28 pixels per axis
  c.augment.interpolation = 'nearest'  # torchvision's default for both
  c.augment.clean_epochs = 0   # the last N epochs train on un-augmented images
  c.augment.cutout = 0         # > 0: black out one square of this side (pixels)
                               # per image after the warp (DeVries & Taylor)
  # The public anchors' additions (docs/anchors.md); the defaults change nothing.
  c.augment.scale = 0.0        # zoom drawn from [1 - scale, 1 + scale]
  c.augment.integer_shift = True  # round shifts to whole pixels (torchvision);
                                  # False: sub-pixel (albumentations)
  c.augment.fill = 0.0         # the raw intensity in [0, 1] outside the image
  c.augment.border = 'constant'  # 'constant' (fill) or 'reflect' (OpenCV's
                                 # BORDER_REFLECT_101, albumentations' default)
  c.augment.warp_p = 1.0       # each image is warped with this probability
  c.augment.brightness = 0.0   # jitter: torchvision's factor U(1 - b, 1 + b), or
  c.augment.contrast = 0.0     # albumentations' limits (augment.py)
  c.augment.jitter = 'torchvision'  # 'torchvision': ColorJitter before the warp;
                                    # 'albumentations': RandomBrightnessContrast after it
  c.augment.jitter_p = 1.0     # each image is jittered with this probability

  c.label_smoothing = 0.0   # as PyTorch's CrossEntropyLoss; the reported
                            # train loss stays the plain cross-entropy
  c.ema_decay = 0.0         # > 0: evaluate and export a moving average of the
                            # weights and BN statistics, updated every step
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 15
  c.seed = 0
  c.num_seeds = 1           # K > 1: seeds seed..seed+K-1 at once, each in
                            # WORKDIR/seed_S
  c.seed_parallelism = 'auto'  # K seeds as one 'vmap' or an 'unroll'ed program;
                               # 'auto': unroll on CPU (faster there), else vmap
  c.steps_per_dispatch = 0  # train steps per jitted call (lax.scan); 0 = auto:
                            # the whole epoch on GPU/TPU, one step on CPU

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'           # 'sgd' or 'adam', both as PyTorch's
  c.optimizer.learning_rate = 0.01   # for 'step' and 'constant' schedules
  c.optimizer.momentum = 0.9         # SGD; replaced by the cycle if cycle_momentum
  c.optimizer.weight_decay = 0.0     # coupled (L2), as PyTorch's
  c.optimizer.nesterov = False       # SGD, as torch.optim.SGD(nesterov=...)
  c.optimizer.b1 = 0.9               # Adam
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'constant'       # 'onecycle', 'step', 'constant' or 'piecewise'
  c.schedule.max_lr = 0.05           # onecycle: PyTorch OneCycleLR's arguments
  c.schedule.pct_start = 0.3
  c.schedule.div_factor = 25.0
  c.schedule.final_div_factor = 1e4
  c.schedule.cycle_momentum = True
  c.schedule.base_momentum = 0.85
  c.schedule.max_momentum = 0.95
  c.schedule.step_size = 8           # step: StepLR, in epochs
  c.schedule.gamma = 0.1
  c.schedule.knots = ''              # piecewise: 'EPOCH:LR,EPOCH:LR,...', the
                                     # straight lines through them give each epoch's LR

  # Knowledge distillation (Hinton et al.), a separate track: the student keeps
  # the parameter and epoch rules; the teacher's training is extra compute.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ''             # workdir of a trained run (its latest
                                     # checkpoint teaches); '' = off
  c.distill.alpha = 0.0              # in [0, 1]: loss = (1 - alpha) * CE(labels,
                                     # label_smoothing) + alpha * T^2 * KL(teacher_T
                                     # || student_T), _T: softmax of logits / T
  c.distill.temperature = 4.0        # T > 0

  c.keep_checkpoints = 2    # the last N epochs' checkpoints, plus the best one
  c.checkpoint_every = 1    # save every N epochs (and the last); a resume restarts
                            # from the last saved epoch. Each save costs ~0.2 s
                            # a run, which adds up over a sweep's many runs
  c.target_accuracy = 99.4  # the final-3-epoch average the seeds aim for
  c.progress_bar = True
  return c
