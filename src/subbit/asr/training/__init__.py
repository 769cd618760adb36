"""The training loop in pieces, one job per module (``subbit.asr.train`` re-exports the public names).

``config`` (TrainConfig, TrainResult), ``schedule`` (LRSchedule), ``dist`` (torchrun helpers),
``batches`` (BatchStream and the RNG state), ``budget`` (StepBudget: the time budget, corrected as
training goes), ``log`` (RUN/log.csv), ``guard`` (NaN and explosion guard, recovery command),
``setup`` (data, tokenizer, model, frontend and the run directory of a new or resumed run),
``state`` (the checkpoint: save and restore) and ``loop`` (``train`` and ``train_step``).
"""
