//! ONNX Runtime in the worker: one environment and one session per run, fed from Arrow
//! columns without copying.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue, SessionOutputs};
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
    _env: ort::environment::Environment,
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
        Ok(Engine { session, provider, warnings, outputs: OutputBuffers::default(), _env: env })
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

    /// Runs the model on `batch`, whose columns are named after the model's inputs.
    pub fn score(&mut self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let rows = batch.num_rows();
        if let Some((_, options)) = self.outputs.kept.as_ref().filter(|(kept, _)| *kept == rows) {
            let refused = match self.session.run_with_options(input_values(&self.session, batch)?, options) {
                Ok(outputs) => return outputs_batch(&outputs),
                Err(e) => e.to_string(),
            };
            tracing::info!(
                "ONNX Runtime refused the kept output tensors ({refused}): outputs are allocated per call from here on"
            );
            self.outputs.refused = true;
            self.outputs.kept = None;
        }
        let outputs =
            self.session.run(input_values(&self.session, batch)?).map_err(|e| format!("onnx runtime: {e}"))?;
        let scored = outputs_batch(&outputs)?;
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
    let session =
        builder.commit_from_file(model).map_err(|e| anyhow::anyhow!("loading model {}: {e}", model.display()))?;
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
    fn kept_outputs_hold_each_calls_values_until_the_data_changes_an_output_shape() {
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
    }
}
