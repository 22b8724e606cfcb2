//! ONNX Runtime in the worker: one environment and one session per run, fed from Arrow
//! columns without copying.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::job::Device;

pub struct Engine {
    session: Session,
    /// The execution provider that runs the model ("cpu" or "cuda").
    pub provider: String,
    _env: ort::environment::Environment,
}

impl Engine {
    pub fn open(ort_lib: &Path, model: &Path, device: Device) -> anyhow::Result<Engine> {
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
        let (session, provider) = build_session(&env, model, device)?;
        Ok(Engine { session, provider, _env: env })
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
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = Vec::new();
        for outlet in self.session.inputs() {
            let name = outlet.name();
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| format!("model input `{name}` has no column in the scoring batch"))?;
            inputs.push((name.to_string(), tensor_of(col, name, outlet.dtype())?));
        }
        let outputs = self.session.run(inputs).map_err(|e| format!("onnx runtime: {e}"))?;
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (name, value) in outputs.iter() {
            let (field, column) = column_of(name, &value)?;
            fields.push(field);
            columns.push(column);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| format!("model output: {e}"))
    }
}

fn build_session(
    env: &ort::environment::Environment,
    model: &Path,
    device: Device,
) -> anyhow::Result<(Session, String)> {
    let err = |e: ort::Error<_>| anyhow::anyhow!("configuring the ONNX Runtime session: {e}");
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
                    tracing::warn!("device = \"auto\": CUDA unavailable ({e}), scoring on CPU");
                    "cpu"
                }
            }
        }
    };
    let session =
        builder.commit_from_file(model).map_err(|e| anyhow::anyhow!("loading model {}: {e}", model.display()))?;
    Ok((session, provider.to_string()))
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
