"""labkit: a workbook for handwritten digit recognition with a CNN on MNIST.

The modules in data-flow order (the map to read first; each imports only modules above it):

    config       paths (the checkout, found from an editable install, LABKIT_ROOT or the current folder),
                 TrainConfig (every hyperparameter, one comment each), allowed values
    recipes      what labkit trains and compares against: recipes, the ladder, the frontier, published figures
    safeio       bounded reads of files users name (regular files only, size limits, JSON)
    data         the IDX reader (bounded, checked), MNIST with SHA-256, MNIST as tensors, input scaling
    device       a run's setup in one place: CUDA or CPU, fp32 or bf16, TF32 and determinism; the processor
    fastpath     the baseline's fused conv + max-pool CPU op (compiled on first use) and its W2·W1 chain
    models       BaselineCNN (the report's network), ImprovedCNN, their ablation variants; build_model, layer_table
    records      provenance, metrics.json and epochs.csv contents (written atomically)
    checkpoint   checkpoints (weights + config + metrics + provenance), written atomically, read with bounds
    runfolder    a run folder's one owner: layout and file names, the single-writer lock, resume
    progress     progress lines for the CLI and Jupyter
    train        the one training path: a run's epoch loop, the runs loop, a TrainingJob in a thread
    reference    the report's own training loop as written (the tests' oracle, the benchmark's baseline)
    stats        the report's table (best / worst / mean / std), t intervals, paired tests, per-digit accuracy
    preprocess   pictures -> the 28x28 a model sees (the report's readImage, or MNIST-style)
    predict      inference (probabilities, saliency) and Predictor: a checkpoint loaded once, for arrays and files
    shipped      the shipped runs (data/runs) and sweeps (data/sweeps), verified by SHA-256; headline figures
    grid         sweep grids and seeds parsed and checked, their trials, summaries and paired comparisons (no Ray)
    plots        figures and HTML tables the notebooks show
    synth        the synthetic custom digit set (photos and drawings rendered from MNIST test digits)
    widgets      notebook widgets: upload-and-predict, drawing pad, training panel (a TrainingJob's view)
    sweep        a grid's (or the ablation ladder's) trials on Ray Tune, each train_runs into its own run folder
    notebooks_runner   papermill: run the notebooks into a folder, with HTML beside
    cli          `labkit train | predict | run-notebooks | sweep | ship | readme` (imports downward only)
"""
__version__ = "0.1.0"
