"""labkit: a workbook for handwritten digit recognition with a CNN on MNIST.

The modules in data-flow order (the map to read first):

    config       paths (the checkout, found from an editable install, LABKIT_ROOT or the current folder),
                 TrainConfig (every hyperparameter, one comment each), RECIPES, allowed values
    data         the IDX reader (bounded, checked), MNIST with SHA-256, MNIST as tensors, input scaling
    safeio       bounded reads of files users name (regular files only, size limits, JSON)
    models       BaselineCNN (the report's network) and ImprovedCNN; build_model(name), layer_table
    fastpath     the baseline's fused conv + max-pool CPU op (compiled on first use) and its W2·W1 chain
    device       a run's setup in one place: CUDA or CPU, fp32 or bf16, TF32 and determinism; the processor
    records      provenance, metrics.json and epochs.csv contents (written atomically)
    checkpoint   checkpoints (weights + config + metrics + provenance), read with bounds, and inference
    runfolder    a run folder's one owner: layout and file names, the single-writer lock, resume
    train        the one training path: a run's epoch loop, the runs loop, a TrainingJob in a thread
    reference    the report's own training loop as written (the tests' oracle, the benchmark's baseline)
    stats        the report's table (best / worst / mean / std), t intervals, paired tests, per-digit accuracy
    shipped      the shipped runs in data/runs (verified by SHA-256) and their headline figures
    progress     progress lines for the CLI and Jupyter
    plots        figures and HTML tables the notebooks show
    preprocess   pictures -> the 28x28 a model sees (the report's readImage, or MNIST-style)
    synth        the synthetic custom digit set (photos and drawings rendered from MNIST test digits)
    predict      Predictor: a checkpoint loaded once, predicting arrays and image files
    widgets      notebook widgets: upload-and-predict, drawing pad, training panel (a TrainingJob's view)
    grid         sweep grids and seeds parsed and checked, their trials and summaries (no Ray)
    sweep        a grid's trials on Ray Tune, each one train_runs into its own run folder
    notebooks_runner   papermill: run the notebooks into a folder, with HTML beside
    cli          `labkit train | predict | run-notebooks | sweep | ship | readme` (imports downward only)
"""
__version__ = "0.1.0"
