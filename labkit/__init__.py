"""labkit: a workbook for handwritten digit recognition with a CNN on MNIST.

The modules in data-flow order (the map to read first):

    config       paths, TrainConfig (every hyperparameter, one comment each), RECIPES, allowed values
    data         the IDX reader (bounded, checked), MNIST with SHA-256, MNIST as tensors, input scaling
    models       BaselineCNN (the report's network) and ImprovedCNN; build_model(name)
    fastpath     the baseline's fused conv + max-pool CPU op (compiled on first use) and its W2·W1 chain
    device       CUDA or CPU, fp32 or bf16, the processor's name
    train        the one training path: a run's epoch loop, and the runs loop that writes metrics.json
    records      provenance, metrics.json and epochs.csv (written atomically)
    checkpoint   checkpoints (weights + config + metrics + provenance) and inference (predict_proba)
    stats        the report's table: best / worst / mean / std over runs
    progress     progress lines for the CLI and Jupyter
    plots        figures and HTML tables the notebooks show
    preprocess   pictures -> the 28x28 a model sees (the report's readImage, or MNIST-style)
    synth        the synthetic custom digit set (photos and drawings rendered from MNIST test digits)
    predict      Predictor: a checkpoint loaded once, predicting arrays and image files
    widgets      notebook widgets: upload-and-predict, drawing pad, training panel
    sweep        grids of runs (learning rate, seeds) on Ray Tune
    notebooks_runner   papermill: run the notebooks into a folder, with HTML beside
    cli          `labkit train | predict | run-notebooks | sweep`
"""
__version__ = "0.1.0"
