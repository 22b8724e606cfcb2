//! ONNX Runtime in the worker: one environment and one session per run, fed from Arrow
//! columns without copying. On CUDA the session runs through I/O binding
//! ([`DeviceIo`]); a call that fails there fails the run with its cause named, or, for
//! `device = "auto"`, moves the rest of the run to the CPU ([`after_failure`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{
    HasSelectedOutputs, IoBinding, OutputSelector, RunOptions, Session, SessionInputValue, SessionOutputs,
};
use ort::value::{DynValue, Shape, Tensor, TensorElementType, TensorRef, ValueType};

use crate::job::Device;

pub struct Engine {
    session: Session,
    /// The execution provider that runs the model ("cpu" or "cuda").
    pub provider: String,
    /// What the run should know of how the session was set up (`auto` falling back to the
    /// CPU): logged, and kept in the run's history.
    pub warnings: Vec<String>,
    outputs: OutputBuffers,
    /// Set when the session runs on a device: its calls go through I/O binding.
    io: Option<DeviceIo>,
    /// What the job asked for, and its model: a CUDA failure under `auto` opens the model
    /// again on the CPU.
    device: Device,
    model: PathBuf,
    env: ort::environment::Environment,
}

/// ONNX Runtime I/O binding for a session on CUDA. Each input is copied into a tensor
/// of CUDA pinned host memory, kept from call to call while the batch length stays the
/// same, from which ONNX Runtime copies it to the device by DMA; each output is bound
/// to pinned memory too, which ONNX Runtime's arena reuses: the scores come back in one
/// device-to-host copy into memory the CPU reads directly, instead of a device output
/// and a fresh pageable buffer per call.
struct DeviceIo {
    binding: IoBinding,
    /// Where the outputs go (pinned memory on CUDA).
    outputs_in: MemoryInfo<'static>,
    /// Where the inputs are staged (pinned memory on CUDA).
    staging: Allocator,
    /// The staged input tensors, by model input, for batches of `rows` rows (None: none yet).
    staged: Vec<(String, ort::value::DynTensor)>,
    rows: Option<usize>,
    /// Tests: the error ONNX Runtime would give on a device this machine lacks.
    #[cfg(test)]
    fails_with: Option<String>,
}

impl DeviceIo {
    fn new(session: &Session, staging: Allocator, outputs_in: MemoryInfo<'static>) -> ort::Result<DeviceIo> {
        Ok(DeviceIo {
            binding: session.create_binding()?,
            outputs_in,
            staging,
            staged: Vec::new(),
            rows: None,
            #[cfg(test)]
            fails_with: None,
        })
    }

    /// Binding for a session on CUDA: inputs staged and outputs bound in pinned memory.
    fn cuda(session: &Session) -> ort::Result<DeviceIo> {
        let pinned = |kind| MemoryInfo::new(AllocationDevice::CUDA_PINNED, 0, AllocatorType::Device, kind);
        let staging = Allocator::new(session, pinned(MemoryType::CPUInput)?)?;
        DeviceIo::new(session, staging, pinned(MemoryType::CPUOutput)?)
    }

    fn score(&mut self, session: &mut Session, batch: &RecordBatch) -> Result<RecordBatch, CallError> {
        #[cfg(test)]
        if let Some(error) = &self.fails_with {
            return Err(CallError::Runtime(error.clone()));
        }
        self.stage(session, batch)?;
        let bind = |e: ort::Error, what: &str| CallError::Runtime(format!("binding {what}: {e}"));
        let scored = self
            .staged
            .iter()
            .try_for_each(|(name, tensor)| {
                self.binding.bind_input(name.as_str(), tensor).map_err(|e| bind(e, &format!("model input `{name}`")))
            })
            // Bound again at each call: ONNX Runtime otherwise writes into the tensors the
            // last call left, which fails when an output's length changes.
            .and_then(|()| {
                session.outputs().iter().try_for_each(|outlet| {
                    let name = outlet.name();
                    self.binding
                        .bind_output_to_device(name, &self.outputs_in)
                        .map_err(|e| bind(e, &format!("model output `{name}`")))
                })
            })
            .and_then(|()| {
                let outputs = session.run_binding(&self.binding).map_err(|e| CallError::Runtime(e.to_string()))?;
                outputs_batch(&outputs).map_err(CallError::Batch)
            });
        // The staged tensors are written again by the next call: the binding lets go of
        // them after each one, whatever its outcome.
        self.binding.clear_inputs();
        scored
    }

    /// Copies the batch's model inputs into the staged tensors (allocated again when the
    /// batch length changes).
    fn stage(&mut self, session: &Session, batch: &RecordBatch) -> Result<(), CallError> {
        let rows = batch.num_rows();
        if self.rows != Some(rows) {
            self.staged.clear();
            self.rows = None;
            for outlet in session.inputs() {
                let ty = outlet
                    .dtype()
                    .tensor_type()
                    .ok_or_else(|| CallError::Batch(format!("model input `{}` is not a tensor", outlet.name())))?;
                let tensor = ort::value::DynTensor::new(&self.staging, ty, [rows])
                    .map_err(|e| CallError::Runtime(format!("staging model input `{}`: {e}", outlet.name())))?;
                self.staged.push((outlet.name().to_string(), tensor));
            }
            self.rows = Some(rows);
        }
        for (name, tensor) in &mut self.staged {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| CallError::Batch(format!("model input `{name}` has no column in the scoring batch")))?;
            copy_column(col, tensor).map_err(|e| CallError::Batch(format!("model input `{name}`: {e}")))?;
        }
        Ok(())
    }
}

/// Copies an Arrow column into a tensor of the same element type and length.
fn copy_column(col: &ArrayRef, tensor: &mut ort::value::DynTensor) -> Result<(), String> {
    fn copy<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
        values: &[T],
        tensor: &mut ort::value::DynTensor,
    ) -> Result<(), String> {
        let (_, dst) = tensor.try_extract_tensor_mut::<T>().map_err(|e| e.to_string())?;
        dst.copy_from_slice(values);
        Ok(())
    }
    match col.data_type() {
        DataType::Int64 => copy(col.as_primitive::<Int64Type>().values(), tensor),
        DataType::Int32 => copy(col.as_primitive::<Int32Type>().values(), tensor),
        DataType::Float32 => copy(col.as_primitive::<Float32Type>().values(), tensor),
        DataType::Float64 => copy(col.as_primitive::<Float64Type>().values(), tensor),
        other => Err(format!("the batch column is {other}, which no model input takes")),
    }
    .map_err(|e| match tensor.dtype().tensor_type() {
        Some(want) => format!("wants {want:?}: {e}"),
        None => e,
    })
}

/// Rows per call on the GPU: 262,144, the size that gave the fastest whole job in the
/// batch sweep on an H200 (M workload, MLP ranker: 2.60 s, against 3.42 s at 65,536 and
/// 2.66 s at 1,048,576), bounded so that a call's working set, counted generously at
/// 4 KiB a row (an MLP with two hidden layers of 256 holds about 2.3 KiB a pair), takes at
/// most a quarter of the device's free memory. A multiple of 4,096, at least 4,096.
pub(crate) fn device_batch_rows(free_bytes: Option<u64>) -> u64 {
    const BEST: u64 = 262_144;
    const BYTES_PER_ROW: u64 = 4096;
    const STEP: u64 = 4096;
    let fits = free_bytes.map_or(BEST, |free| free / 4 / BYTES_PER_ROW);
    (BEST.min(fits) / STEP * STEP).max(STEP)
}

/// Free memory of the GPU that ONNX Runtime's device 0 is (the first of
/// `CUDA_VISIBLE_DEVICES`, if set), as `nvidia-smi` reports it; None if it cannot say.
fn cuda_free_bytes() -> Option<u64> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let id = visible.as_deref().and_then(|v| v.split(',').next()).filter(|v| !v.trim().is_empty()).unwrap_or("0");
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", &format!("--id={}", id.trim())])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()?;
    Some(mib << 20)
}

/// Why a call failed: the batch does not fit the model (the run fails whatever the
/// device), or ONNX Runtime failed in the call.
enum CallError {
    Batch(String),
    Runtime(String),
}

/// What a failed model call means for the run.
#[derive(Debug, PartialEq)]
enum AfterFailure {
    /// The run fails with this message.
    Fail(String),
    /// `device = "auto"` on CUDA: the run goes on on the CPU, from this call; the warning
    /// is kept in the run's history.
    ToCpu(String),
}

/// Decides what a failed call on `provider` does to the run, naming the cause on CUDA.
fn after_failure(device: Device, provider: &str, error: &str) -> AfterFailure {
    if provider != "cuda" {
        return AfterFailure::Fail(format!("onnx runtime: {error}"));
    }
    let cause = cuda_cause(error);
    match device {
        Device::Auto => AfterFailure::ToCpu(format!(
            "device = \"auto\": {cause} during the run; the rest of the run scored on CPU (onnx runtime: {error})"
        )),
        Device::Cuda | Device::Cpu => AfterFailure::Fail(format!("device = \"cuda\": {cause} (onnx runtime: {error})")),
    }
}

/// The cause of an ONNX Runtime error on CUDA, in words an operator can act on; read
/// from the messages of ONNX Runtime's CUDA provider and its memory arena.
fn cuda_cause(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| e.contains(n));
    if any(&["out of memory", "failed to allocate", "alloc_failed", "memoryallocation", "available memory of"]) {
        "the GPU ran out of memory (a smaller `batch_pairs` in the job's [params] needs less)"
    } else if any(&["could not find an implementation", "no kernel", "not_implemented", "not implemented"]) {
        "an operator of the model cannot run on CUDA"
    } else {
        "ONNX Runtime failed on CUDA"
    }
}

/// Output tensors allocated once and written by every call of one batch length: a
/// plugin's batches mostly have one length (all but its last), so ONNX Runtime does not
/// allocate outputs per call. Kept from the second call of a length on (a plugin whose
/// lengths vary gets no tensors it would use once), in the shapes the model gave for that
/// length. A model whose output shapes depend on the data refuses such a tensor: that
/// call runs again without them, and the run keeps the model's own outputs.
#[derive(Default)]
struct OutputBuffers {
    last_rows: Option<usize>,
    kept: Option<(usize, RunOptions<HasSelectedOutputs>)>,
    refused: bool,
}

impl Engine {
    pub fn open(ort_lib: &Path, model: &Path, device: Device) -> anyhow::Result<Engine> {
        // ONNX Runtime opens the model itself: a FIFO there would hang the worker in it.
        crate::fsutil::check_regular(model, u64::MAX)
            .map_err(|e| anyhow::anyhow!("model file {} {e}", model.display()))?;
        if !ort_lib.is_file() {
            anyhow::bail!(
                "ONNX Runtime library {} not found (run `make setup`, or set ORT_DYLIB_PATH / `onnxruntime` in recd.toml)",
                ort_lib.display()
            );
        }
        let env = ort::init_from(ort_lib)
            .map_err(|e| anyhow::anyhow!("loading ONNX Runtime {}: {e}", ort_lib.display()))?
            .with_name("recd")
            .build()
            .map_err(|e| anyhow::anyhow!("creating the ONNX Runtime environment: {e}"))?;
        let (session, provider, warnings) = build_session(&env, model, device)?;
        let io =
            match provider.as_str() {
                "cuda" => Some(DeviceIo::cuda(&session).map_err(|e| {
                    anyhow::anyhow!("binding the model's inputs and outputs to CUDA pinned memory: {e}")
                })?),
                _ => None,
            };
        Ok(Engine {
            session,
            provider,
            warnings,
            outputs: OutputBuffers::default(),
            io,
            device,
            model: model.to_path_buf(),
            env,
        })
    }

    /// Rows per model call this session prefers, handed to the plugin (`batch_rows` of
    /// the model inputs table): on the CPU none (0: the plugin's own rule, which knows its
    /// work), on CUDA [`device_batch_rows`] for the device's free memory.
    pub fn preferred_batch_rows(&self) -> u64 {
        match self.provider.as_str() {
            "cuda" => device_batch_rows(cuda_free_bytes()),
            _ => 0,
        }
    }

    /// The model's inputs: name and element type ("int64", "float32"...).
    pub fn inputs(&self) -> Vec<(String, String)> {
        self.session
            .inputs()
            .iter()
            .map(|outlet| {
                let dtype = match outlet.dtype().tensor_type() {
                    Some(TensorElementType::Int64) => "int64",
                    Some(TensorElementType::Int32) => "int32",
                    Some(TensorElementType::Float32) => "float32",
                    Some(TensorElementType::Float64) => "float64",
                    _ => "unsupported",
                };
                (outlet.name().to_string(), dtype.to_string())
            })
            .collect()
    }

    /// Runs the model on `batch`, whose columns are named after the model's inputs. A
    /// failed call fails the run, except on CUDA under `device = "auto"`, where the call
    /// and the rest of the run go to the CPU.
    pub fn score(&mut self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let error = match self.score_once(batch) {
            Ok(scored) => return Ok(scored),
            Err(CallError::Batch(message)) => return Err(message),
            Err(CallError::Runtime(error)) => error,
        };
        match after_failure(self.device, &self.provider, &error) {
            AfterFailure::Fail(message) => Err(message),
            AfterFailure::ToCpu(warning) => {
                self.move_to_cpu(warning)?;
                self.score_once(batch).map_err(|e| match e {
                    CallError::Batch(message) => message,
                    CallError::Runtime(error) => format!("onnx runtime: {error}"),
                })
            }
        }
    }

    /// Opens the model again on the CPU for the rest of the run, keeping `warning`.
    fn move_to_cpu(&mut self, warning: String) -> Result<(), String> {
        tracing::warn!("{warning}");
        let (session, provider, _) = build_session(&self.env, &self.model, Device::Cpu)
            .map_err(|e| format!("{warning}; opening the model on CPU failed: {e:#}"))?;
        self.session = session;
        self.provider = provider;
        self.io = None;
        self.outputs = OutputBuffers::default();
        self.warnings.push(warning);
        Ok(())
    }

    /// One call, as the session runs: through I/O binding on a device, else in place.
    fn score_once(&mut self, batch: &RecordBatch) -> Result<RecordBatch, CallError> {
        if let Some(io) = self.io.as_mut() {
            return io.score(&mut self.session, batch);
        }
        let rows = batch.num_rows();
        if let Some((_, options)) = self.outputs.kept.as_ref().filter(|(kept, _)| *kept == rows) {
            let inputs = input_values(&self.session, batch).map_err(CallError::Batch)?;
            let refused = match self.session.run_with_options(inputs, options) {
                Ok(outputs) => return outputs_batch(&outputs).map_err(CallError::Batch),
                Err(e) => e.to_string(),
            };
            tracing::info!(
                "ONNX Runtime refused the kept output tensors ({refused}): outputs are allocated per call from here on"
            );
            self.outputs.refused = true;
            self.outputs.kept = None;
        }
        let inputs = input_values(&self.session, batch).map_err(CallError::Batch)?;
        let outputs = self.session.run(inputs).map_err(|e| CallError::Runtime(e.to_string()))?;
        let scored = outputs_batch(&outputs).map_err(CallError::Batch)?;
        let again = self.outputs.last_rows.replace(rows) == Some(rows);
        if again && !self.outputs.refused && self.outputs.kept.is_none() {
            self.outputs.kept = keep_outputs(&outputs).map(|options| (rows, options));
        }
        Ok(scored)
    }

    /// The batch length whose outputs are kept, if any.
    #[cfg(test)]
    fn kept_rows(&self) -> Option<usize> {
        self.outputs.kept.as_ref().map(|(rows, _)| *rows)
    }
}

/// The model's inputs, viewed in place in the batch's columns.
fn input_values<'b>(session: &Session, batch: &'b RecordBatch) -> Result<Vec<(String, SessionInputValue<'b>)>, String> {
    let mut inputs = Vec::new();
    for outlet in session.inputs() {
        let name = outlet.name();
        let col = batch
            .column_by_name(name)
            .ok_or_else(|| format!("model input `{name}` has no column in the scoring batch"))?;
        inputs.push((name.to_string(), tensor_of(col, name, outlet.dtype())?));
    }
    Ok(inputs)
}

fn outputs_batch(outputs: &SessionOutputs<'_>) -> Result<RecordBatch, String> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, value) in outputs.iter() {
        let (field, column) = column_of(name, &value)?;
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| format!("model output: {e}"))
}

/// Run options that hand ONNX Runtime a tensor of each output's type and shape to write
/// into; None if an output is of a type `column_of` does not take.
fn keep_outputs(outputs: &SessionOutputs<'_>) -> Option<RunOptions<HasSelectedOutputs>> {
    let mut selector = OutputSelector::default();
    for (name, value) in outputs.iter() {
        let shape = value.dtype().tensor_shape()?.clone();
        selector = selector.preallocate(name, output_tensor(value.dtype().tensor_type()?, shape)?);
    }
    Some(RunOptions::new().ok()?.with_outputs(selector))
}

fn output_tensor(ty: TensorElementType, shape: Shape) -> Option<DynValue> {
    let cpu = Allocator::default();
    let tensor = match ty {
        TensorElementType::Float32 => Tensor::<f32>::new(&cpu, shape).ok()?.into_dyn(),
        TensorElementType::Float64 => Tensor::<f64>::new(&cpu, shape).ok()?.into_dyn(),
        TensorElementType::Int64 => Tensor::<i64>::new(&cpu, shape).ok()?.into_dyn(),
        TensorElementType::Int32 => Tensor::<i32>::new(&cpu, shape).ok()?.into_dyn(),
        _ => return None,
    };
    Some(tensor)
}

fn build_session(
    env: &ort::environment::Environment,
    model: &Path,
    device: Device,
) -> anyhow::Result<(Session, String, Vec<String>)> {
    let err = |e: ort::Error<_>| anyhow::anyhow!("configuring the ONNX Runtime session: {e}");
    let mut warnings = Vec::new();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut builder = Session::builder(env)
        .map_err(|e| anyhow::anyhow!("creating a session builder: {e}"))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(err)?
        .with_intra_threads(threads)
        .map_err(err)?
        // No spinning: between two calls the plugin's own work needs the cores. With
        // spinning, on 2 cores, the M workload's whole job took 1.19x as long and its calls
        // were no faster (paired runs, 2026-12-07).
        .with_intra_op_spinning(false)
        .map_err(err)?;
    let provider = match device {
        Device::Cpu => "cpu",
        Device::Cuda => {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| anyhow::anyhow!("device = \"cuda\": the CUDA execution provider cannot be used: {e}"))?
                .with_disable_cpu_fallback()
                .map_err(err)?;
            "cuda"
        }
        Device::Auto => {
            match builder.clone().with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()]) {
                Ok(b) => {
                    builder = b;
                    "cuda"
                }
                Err(e) => {
                    let warning = format!("device = \"auto\": CUDA unavailable ({e}), scoring on CPU");
                    tracing::warn!("{warning}");
                    warnings.push(warning);
                    "cpu"
                }
            }
        }
    };
    let session = builder.commit_from_file(model).map_err(|e| match provider {
        // Strict CUDA (no CPU fallback) refuses a model with an operator it lacks here.
        "cuda" => anyhow::anyhow!("loading model {} on CUDA: {} ({e})", model.display(), cuda_cause(&e.to_string())),
        _ => anyhow::anyhow!("loading model {}: {e}", model.display()),
    })?;
    Ok((session, provider.to_string(), warnings))
}

fn tensor_of<'a>(col: &'a ArrayRef, name: &str, dtype: &ValueType) -> Result<SessionInputValue<'a>, String> {
    let want = dtype.tensor_type().ok_or_else(|| format!("model input `{name}` is not a tensor"))?;
    let shape = [col.len()];
    let value: SessionInputValue<'a> = match (want, col.data_type()) {
        (TensorElementType::Int64, DataType::Int64) => {
            TensorRef::from_array_view((shape, col.as_primitive::<Int64Type>().values().as_ref())).map(Into::into)
        }
        (TensorElementType::Int32, DataType::Int32) => {
            TensorRef::from_array_view((shape, col.as_primitive::<Int32Type>().values().as_ref())).map(Into::into)
        }
        (TensorElementType::Float32, DataType::Float32) => {
            TensorRef::from_array_view((shape, col.as_primitive::<Float32Type>().values().as_ref())).map(Into::into)
        }
        (TensorElementType::Float64, DataType::Float64) => {
            TensorRef::from_array_view((shape, col.as_primitive::<Float64Type>().values().as_ref())).map(Into::into)
        }
        (want, have) => return Err(format!("model input `{name}` wants {want:?}, the batch column is {have}")),
    }
    .map_err(|e| format!("model input `{name}`: {e}"))?;
    Ok(value)
}

fn column_of(name: &str, value: &ort::value::DynValueRef<'_>) -> Result<(Field, ArrayRef), String> {
    let fail = |e: ort::Error| format!("model output `{name}`: {e}");
    let ty = value.dtype().tensor_type().ok_or_else(|| format!("model output `{name}` is not a tensor"))?;
    let (dt, array): (DataType, ArrayRef) = match ty {
        TensorElementType::Float32 => {
            let (_, v) = value.try_extract_tensor::<f32>().map_err(fail)?;
            (DataType::Float32, Arc::new(Float32Array::from(v.to_vec())))
        }
        TensorElementType::Float64 => {
            let (_, v) = value.try_extract_tensor::<f64>().map_err(fail)?;
            (DataType::Float64, Arc::new(Float64Array::from(v.to_vec())))
        }
        TensorElementType::Int64 => {
            let (_, v) = value.try_extract_tensor::<i64>().map_err(fail)?;
            (DataType::Int64, Arc::new(Int64Array::from(v.to_vec())))
        }
        TensorElementType::Int32 => {
            let (_, v) = value.try_extract_tensor::<i32>().map_err(fail)?;
            (DataType::Int32, Arc::new(Int32Array::from(v.to_vec())))
        }
        other => return Err(format!("model output `{name}` has unsupported type {other:?}")),
    };
    Ok((Field::new(name, dt, false), array))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
        let ort = root.join(".deps/py/onnxruntime/capi/libonnxruntime.so.1.31.1");
        Engine::open(&ort, &root.join("models/test/outputs.onnx"), Device::Cpu).expect("engine opens")
    }

    /// Scores `xs` (and `k = 10 x`) and checks both outputs against what the model
    /// computes: y = 2x and n = k + 1, where x > 0.
    fn check_call(engine: &mut Engine, call: usize, xs: &[f32]) {
        let ks: Vec<i64> = xs.iter().map(|x| (*x * 10.0) as i64).collect();
        let batch = RecordBatch::try_from_iter([
            ("x", Arc::new(Float32Array::from(xs.to_vec())) as ArrayRef),
            ("k", Arc::new(Int64Array::from(ks.clone())) as ArrayRef),
        ])
        .unwrap();
        let scored = engine.score(&batch).expect("scores");
        let floats = |name: &str| scored.column_by_name(name).unwrap().as_primitive::<Float32Type>().values().to_vec();
        let kept = |i: &usize| xs[*i] > 0.0;
        let want_y: Vec<f32> = (0..xs.len()).filter(kept).map(|i| xs[i] * 2.0).collect();
        let want_n: Vec<i64> = (0..xs.len()).filter(kept).map(|i| ks[i] + 1).collect();
        assert_eq!(floats("y"), want_y, "call {call}: y");
        let n = scored.column_by_name("n").unwrap().as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(n, want_n, "call {call}: n");
    }

    // One test, one engine: ONNX Runtime allows one environment per process.
    #[test]
    fn kept_outputs_bound_calls_and_a_move_to_the_cpu_after_a_cuda_failure_score_right() {
        let mut engine = engine();
        // All positive: every output's length follows the batch length. Outputs are kept
        // from the second call of length 3 on, and still for 3 after a batch of 2.
        let steady: [&[f32]; 5] = [&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], &[7.0, 8.0, 9.0], &[1.5, 2.5], &[3.0, 2.0, 1.0]];
        for (call, xs) in steady.iter().enumerate() {
            check_call(&mut engine, call, xs);
            assert_eq!(engine.kept_rows(), (call >= 1).then_some(3), "call {call}");
        }
        // Two positives of three: the outputs no longer fit the kept tensors. ONNX Runtime refuses
        // it, the call runs again, and outputs are not kept for the rest of the run.
        let varying: [&[f32]; 4] = [&[1.0, -1.0, 2.0], &[-4.0, -5.0, 6.0], &[7.0, 8.0, 9.0], &[7.0, 8.0, 9.0]];
        for (call, xs) in varying.iter().enumerate() {
            check_call(&mut engine, steady.len() + call, xs);
            assert_eq!(engine.kept_rows(), None, "call {}", steady.len() + call);
        }

        // I/O binding, as a CUDA session runs (inputs staged and outputs bound in CPU memory
        // here): the same values, whatever the batch and output lengths.
        let cpu = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default).unwrap();
        engine.io = Some(DeviceIo::new(&engine.session, Allocator::default(), cpu.clone()).expect("binds the outputs"));
        for (call, xs) in steady.iter().chain(&varying).enumerate() {
            check_call(&mut engine, 100 + call, xs);
        }

        // A call that fails on "CUDA" (with the error ONNX Runtime's CUDA provider gives
        // when the device is out of memory). Under `device = "cuda"` the run fails and says so.
        let oom = "CUDA failure 2: out of memory ; GPU=0 ; expr=cudaMalloc";
        let fail_on_cuda = |engine: &mut Engine, device: Device| {
            let mut io = DeviceIo::new(&engine.session, Allocator::default(), cpu.clone()).unwrap();
            io.fails_with = Some(oom.to_string());
            engine.io = Some(io);
            (engine.provider, engine.device) = ("cuda".into(), device);
        };
        fail_on_cuda(&mut engine, Device::Cuda);
        let batch = RecordBatch::try_from_iter([
            ("x", Arc::new(Float32Array::from(vec![1.0f32])) as ArrayRef),
            ("k", Arc::new(Int64Array::from(vec![10i64])) as ArrayRef),
        ])
        .unwrap();
        let error = engine.score(&batch).expect_err("the call fails");
        assert_eq!(
            error,
            format!(
                "device = \"cuda\": the GPU ran out of memory (a smaller `batch_pairs` in the job's [params] needs less) (onnx runtime: {oom})"
            )
        );
        assert_eq!(engine.provider, "cuda");
        // Under `auto` the call and the rest of the run move to the CPU, with a warning.
        fail_on_cuda(&mut engine, Device::Auto);
        let warnings_before = engine.warnings.len();
        check_call(&mut engine, 200, &[1.0, 2.0, 3.0]);
        assert_eq!(engine.provider, "cpu");
        assert!(engine.io.is_none());
        assert_eq!(engine.warnings.len(), warnings_before + 1);
        let warning = engine.warnings.last().unwrap();
        assert!(warning.starts_with("device = \"auto\": the GPU ran out of memory"), "{warning}");
        assert!(warning.contains("during the run; the rest of the run scored on CPU"), "{warning}");
        for (call, xs) in steady.iter().enumerate() {
            check_call(&mut engine, 300 + call, xs);
        }
    }

    #[test]
    fn gpu_batches_take_the_measured_best_size_unless_free_memory_is_short() {
        const GIB: u64 = 1 << 30;
        // Unknown or plenty of free memory (an H200 has 141 GB): the measured best.
        assert_eq!(device_batch_rows(None), 262_144);
        assert_eq!(device_batch_rows(Some(140 * GIB)), 262_144);
        // 4 GiB free (a quarter is 1 GiB, at 4 KiB a row) is exactly enough for it.
        assert_eq!(device_batch_rows(Some(4 * GIB)), 262_144);
        // 2 GiB free: half as many rows; 1 GiB + 100 MiB: a quarter, rounded down to 4,096s.
        assert_eq!(device_batch_rows(Some(2 * GIB)), 131_072);
        assert_eq!(device_batch_rows(Some(GIB + (100 << 20))), 65_536 + 4_096);
        // Nearly nothing free: the floor, not zero (zero would mean "no preference").
        assert_eq!(device_batch_rows(Some(10 << 20)), 4_096);
        assert_eq!(device_batch_rows(Some(0)), 4_096);
    }

    #[test]
    fn a_failure_on_cuda_names_its_cause_and_only_auto_moves_to_the_cpu() {
        let oom = "CUDA failure 2: out of memory ; GPU=0 ; hostname=h ; expr=cudaMalloc(&p, size);";
        let arena = "Failed to allocate memory for requested buffer of size 4294967296";
        let op = "Could not find an implementation for Unique(11) node with name 'u'";
        let other = "CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR";
        let ran_out = "the GPU ran out of memory";
        for (error, cause) in [
            (oom, ran_out),
            (arena, ran_out),
            (op, "an operator of the model cannot run on CUDA"),
            (other, "failed on CUDA"),
        ] {
            match after_failure(Device::Cuda, "cuda", error) {
                AfterFailure::Fail(m) => {
                    assert!(m.starts_with("device = \"cuda\": ") && m.contains(cause) && m.contains(error), "{m}")
                }
                AfterFailure::ToCpu(w) => panic!("device = cuda never moves to the CPU: {w}"),
            }
            match after_failure(Device::Auto, "cuda", error) {
                AfterFailure::ToCpu(w) => assert!(w.starts_with("device = \"auto\": ") && w.contains(cause), "{w}"),
                AfterFailure::Fail(m) => panic!("auto on CUDA moves to the CPU: {m}"),
            }
        }
        // On the CPU (asked for, or where `auto` already landed) a failure is the run's end.
        for device in [Device::Cpu, Device::Auto] {
            assert_eq!(after_failure(device, "cpu", oom), AfterFailure::Fail(format!("onnx runtime: {oom}")));
        }
    }
}
