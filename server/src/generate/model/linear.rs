//! Weight matrices in the form the forward pass runs fastest, decided once at load: Q, K and V
//! fused into one matmul (gate and up into another); Q and K rows reordered for the rotary
//! embedding on contiguous halves; and, on the CPU, quantisations converted and inputs padded
//! so candle picks its SIMD kernels.

use std::sync::Arc;

use candle_core::{
    D, Device, Tensor,
    quantized::{GgmlDType, QMatMul, QTensor, ggml_file::qtensor_from_ggml},
};

use super::WeightFormat;
use crate::generate::GenerateError;

/// candle's x86 int8 tile kernels (AVX512-VNNI / AVX-VNNI, weights repacked on first use) run a
/// Q8_0 matmul exactly when its input width is a multiple of this; otherwise it takes one dot
/// product per output. On a 2-core Sapphire Rapids: 190 GMAC/s tiled against 18 GMAC/s for 8
/// rows. The tiles quantise each input row in blocks of this many values (one scale per
/// block), the other path in Q8_0's blocks of 32.
const TILE_INPUT_MULTIPLE: usize = 256;
/// Q8_0's block: the padding that takes a width off a multiple of [`TILE_INPUT_MULTIPLE`].
const Q8_0_BLOCK: usize = 32;

/// What a matrix is loaded for.
#[derive(Debug, Clone, Copy)]
pub(super) struct MatmulKind {
    pub format: WeightFormat,
    pub precision: InputPrecision,
}

/// How finely a matmul's input may be quantised on the CPU, which decides its kernel there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InputPrecision {
    /// One scale per 32 inputs. For Q, K and V: their errors are amplified through the
    /// attention scores. Measured on SmolLM2-135M against an exact f32 forward pass, logits RMS
    /// error 0.30 with Q/K/V fine and the rest tiled, 0.58 (worst prompt 1.8) with everything
    /// tiled; candle's stock Q4_1 model: 0.23.
    Fine,
    /// One scale per 256 inputs, accepted for the tile kernels' speed.
    Tiled,
}

/// A matmul `x · Wᵀ`, with the input zero-padded to the width the weights were padded to.
#[derive(Debug)]
pub(super) struct Linear {
    matmul: QMatMul,
    /// Zero columns appended to the input (zero weight columns match them).
    pad: usize,
}

impl Linear {
    /// `x` is `[rows, inputs]`; returns `[rows, outputs]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.pad {
            0 => x.apply(&self.matmul),
            pad => x.pad_with_zeros(D::Minus1, 0, pad)?.apply(&self.matmul),
        }
    }
}

/// Several projections of the same input. Fused into one matmul (outputs side by side) when
/// their weights share a quantisation: one pass over the input, one quantisation of it and one
/// dispatch instead of several, which is much of a small batch's time.
#[derive(Debug)]
pub(super) enum Projection {
    Fused { linear: Linear, widths: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Projection {
    /// The matrices as one fused matmul when they share a quantisation and input width, else
    /// apart.
    pub fn new(parts: Vec<RawMatrix>, device: &Device, kind: MatmulKind) -> Result<Self, GenerateError> {
        let (dtype, cols) = (parts[0].dtype, parts[0].cols);
        if parts.iter().any(|p| p.dtype != dtype || p.cols != cols) {
            let linears = parts.into_iter().map(|p| p.into_linear(device, None, kind));
            return Ok(Self::Separate(linears.collect::<Result<_, _>>()?));
        }
        let widths = parts.iter().map(|p| p.rows).collect::<Vec<_>>();
        // Row-major blocks: stacking the outputs is concatenating the bytes.
        let fused = RawMatrix {
            dtype,
            rows: widths.iter().sum(),
            cols,
            bytes: parts.into_iter().flat_map(|p| p.bytes).collect(),
        };
        Ok(Self::Fused {
            linear: fused.into_linear(device, None, kind)?,
            widths,
        })
    }

    /// The outputs in the order the weights were given, each `[rows, width]` (views of one
    /// tensor when fused).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Self::Fused { linear, widths } => {
                let y = linear.forward(x)?;
                let mut start = 0;
                let mut parts = Vec::with_capacity(widths.len());
                for &width in widths {
                    parts.push(y.narrow(1, start, width)?);
                    start += width;
                }
                Ok(parts)
            }
            Self::Separate(linears) => linears.iter().map(|l| l.forward(x)).collect(),
        }
    }
}

/// A weight matrix as stored in the file: `rows` outputs of `cols` inputs, row-major, in
/// quantised blocks that never straddle rows.
#[derive(Debug, Clone)]
pub(super) struct RawMatrix {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Vec<u8>,
}

impl RawMatrix {
    fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Reorders the rows within each head so that llama's interleaved rotary pairs (2i, 2i+1)
    /// become the halves (i, i + d/2): the rotation then works on contiguous halves (candle's
    /// `rope_thd`, which takes the `[tokens, heads, dim]` layout the projection produces without
    /// a transpose). Q and K get the same reordering, so their dot products are unchanged.
    pub fn deinterleave_heads(mut self, head_dim: usize) -> Self {
        let row_bytes = self.row_bytes();
        let mut out = Vec::with_capacity(self.bytes.len());
        for head in self.bytes.chunks_exact(head_dim * row_bytes) {
            let rows = (0..head_dim / 2)
                .map(|i| 2 * i)
                .chain((0..head_dim / 2).map(|i| 2 * i + 1));
            for row in rows {
                out.extend_from_slice(&head[row * row_bytes..(row + 1) * row_bytes]);
            }
        }
        self.bytes = out;
        self
    }

    fn stored(&self, device: &Device) -> Result<QTensor, GenerateError> {
        Ok(qtensor_from_ggml(
            self.dtype,
            &self.bytes,
            vec![self.rows, self.cols],
            device,
        )?)
    }

    /// For embedding lookups (no padding): as stored, or converted where the CPU has no SIMD
    /// kernel for the stored type.
    pub fn into_lookup(self, device: &Device) -> Result<QTensor, GenerateError> {
        match cpu_layout(self.dtype, self.cols, InputPrecision::Fine) {
            (dtype, _) if device.is_cpu() && dtype != self.dtype => self.converted(dtype, 0),
            _ => self.stored(device),
        }
    }

    /// The matmul on `device`. On the CPU the matrix may be converted and padded (see
    /// [`cpu_layout`]); when it stays exactly as `same` holds it, that tensor is shared.
    pub fn into_linear(
        self,
        device: &Device,
        same: Option<&Arc<QTensor>>,
        kind: MatmulKind,
    ) -> Result<Linear, GenerateError> {
        if kind.format == WeightFormat::F32 {
            let values = self.stored(&Device::Cpu)?.dequantize(device)?;
            return Ok(Linear {
                matmul: QMatMul::Tensor(values),
                pad: 0,
            });
        }
        let (dtype, cols) = match device.is_cpu() {
            true => cpu_layout(self.dtype, self.cols, kind.precision),
            false => (self.dtype, self.cols),
        };
        let pad = cols - self.cols;
        let matmul = match same {
            Some(shared) if shared.dtype() == dtype && pad == 0 => QMatMul::from_arc(shared.clone())?,
            _ if dtype == self.dtype && pad == 0 => QMatMul::from_qtensor(self.stored(device)?)?,
            _ => QMatMul::from_qtensor(self.converted(dtype, pad)?)?,
        };
        Ok(Linear { matmul, pad })
    }

    /// Re-quantised to `dtype` with `pad` zero columns appended (on the CPU).
    fn converted(self, dtype: GgmlDType, pad: usize) -> Result<QTensor, GenerateError> {
        let values = self.stored(&Device::Cpu)?.dequantize(&Device::Cpu)?;
        let values = match pad {
            0 => values,
            pad => values.pad_with_zeros(1, 0, pad)?,
        };
        Ok(QTensor::quantize(&values, dtype)?)
    }
}

/// How the CPU runs a stored quantisation with `cols` inputs: `(dtype, padded cols)`.
///
/// candle 0.11 has no SIMD dot product for Q4_1, Q5_0 and Q5_1 (scalar loops, several times
/// slower than its AVX2/NEON Q8_0 kernel), so they run as Q8_0, which holds every value of
/// those 4- and 5-bit grids to within 1/254 of the block's largest magnitude, a rounding far
/// below the quantisation already in the weights. Where the x86 int8 tile kernels exist, Q4_0
/// runs as Q8_0 too, and Q8_0 inputs are padded to the width that selects the kernel for
/// `precision`: for tiles, a quarter more multiply-adds on a 576-wide model at a tenth of the
/// cycles each; for fine inputs, one zero block when the width would otherwise select tiles.
fn cpu_layout(stored: GgmlDType, cols: usize, precision: InputPrecision) -> (GgmlDType, usize) {
    let tiles = x86_int8_tiles();
    let dtype = match stored {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => GgmlDType::Q8_0,
        GgmlDType::Q4_0 if tiles => GgmlDType::Q8_0,
        other => other,
    };
    if dtype != GgmlDType::Q8_0 || !tiles {
        return (dtype, cols);
    }
    match precision {
        InputPrecision::Tiled => (dtype, cols.next_multiple_of(TILE_INPUT_MULTIPLE)),
        InputPrecision::Fine if cols.is_multiple_of(TILE_INPUT_MULTIPLE) => (dtype, cols + Q8_0_BLOCK),
        InputPrecision::Fine => (dtype, cols),
    }
}

/// Whether candle runs Q8_0 through its x86 int8 tile kernels here (its own test, including the
/// override that forces the plain AVX2 path).
fn x86_int8_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let forced_avx2 = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() == Ok("1");
        let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
        let avx_vnni = is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2");
        !forced_avx2 && (avx512 || avx_vnni)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, IndexOp};

    use super::*;

    fn raw(values: &Tensor, dtype: GgmlDType) -> RawMatrix {
        let (rows, cols) = values.dims2().expect("a matrix");
        let quantized = QTensor::quantize(values, dtype).expect("quantises");
        let bytes = quantized.data().expect("bytes").into_owned();
        RawMatrix {
            dtype,
            rows,
            cols,
            bytes,
        }
    }

    fn kind(precision: InputPrecision) -> MatmulKind {
        MatmulKind {
            format: WeightFormat::Quantized,
            precision,
        }
    }

    /// What makes ragged batching exact on the quantised path: each output row depends on its
    /// input row only, whatever else is in the batch.
    #[test]
    fn quantized_rows_do_not_depend_on_batching() -> candle_core::Result<()> {
        let device = Device::Cpu;
        for (cols, precision) in [
            (576, InputPrecision::Tiled),
            (576, InputPrecision::Fine),
            (512, InputPrecision::Fine),
        ] {
            let weights = Tensor::randn(0f32, 0.05, (96, cols), &device)?;
            let stored = raw(&weights, GgmlDType::Q4_1);
            let weights = stored
                .stored(&device)
                .and_then(|q| Ok(q.dequantize(&device)?))
                .expect("values");
            let linear = stored
                .into_linear(&device, None, kind(precision))
                .expect("a linear");
            let x = Tensor::randn(0f32, 1.0, (37, cols), &device)?;
            let all = linear.forward(&x)?;
            for chunk in [1, 5, 16] {
                let parts = (0..37)
                    .step_by(chunk)
                    .map(|start| linear.forward(&x.narrow(0, start, chunk.min(37 - start))?))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let gap = (Tensor::cat(&parts, 0)? - &all)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert_eq!(gap, 0.0, "cols {cols}, {precision:?}, chunks of {chunk}");
            }
            // And the result is the matmul of the stored weights, up to the rounding of the input.
            let exact = x.matmul(&weights.t()?)?;
            let error = (all - exact)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(error < 0.1, "cols {cols}, {precision:?}: error {error}");
        }
        Ok(())
    }

    /// The row reordering plus rotation of contiguous halves gives llama's interleaved rotation,
    /// up to the same reordering of each head's dimensions (which dot products do not see).
    #[test]
    fn deinterleaved_heads_rotate_like_interleaved_pairs() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let (heads, head_dim, cols, tokens) = (3, 8, 32, 5);
        let weights = Tensor::randn(0f32, 0.5, (heads * head_dim, cols), &device)?;
        let x = Tensor::randn(0f32, 1.0, (tokens, cols), &device)?;
        let angles = Tensor::randn(0f32, 1.0, (tokens, head_dim / 2), &device)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);

        let q = x.matmul(&weights.t()?)?.reshape((1, tokens, heads, head_dim))?;
        let interleaved = candle_nn::rotary_emb::rope_i(&q.transpose(1, 2)?.contiguous()?, &cos, &sin)?
            .transpose(1, 2)?
            .squeeze(0)?;

        let linear = raw(&weights, GgmlDType::F32)
            .deinterleave_heads(head_dim)
            .into_linear(&device, None, kind(InputPrecision::Fine))
            .expect("a linear");
        let q = linear.forward(&x)?.reshape((1, tokens, heads, head_dim))?;
        let halves = candle_nn::rotary_emb::rope_thd(&q, &cos, &sin)?.squeeze(0)?;

        for j in 0..head_dim {
            // Position j of the reordered head holds dimension 2j (first half) or 2(j - d/2) + 1.
            let original = if j < head_dim / 2 {
                2 * j
            } else {
                2 * (j - head_dim / 2) + 1
            };
            let gap = (halves.i((.., .., j))? - interleaved.i((.., .., original))?)?
                .abs()?
                .max_all()?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
            assert!(gap < 1e-4, "dimension {j}: {gap}");
        }
        Ok(())
    }

    #[test]
    fn cpu_layout_converts_and_pads_for_the_kernels() {
        assert_eq!(
            cpu_layout(GgmlDType::Q4_1, 576, InputPrecision::Fine).0,
            GgmlDType::Q8_0
        );
        assert_eq!(
            cpu_layout(GgmlDType::Q4K, 2048, InputPrecision::Tiled),
            (GgmlDType::Q4K, 2048)
        );
        assert_eq!(
            cpu_layout(GgmlDType::F16, 576, InputPrecision::Tiled),
            (GgmlDType::F16, 576)
        );
        let tiled = cpu_layout(GgmlDType::Q8_0, 576, InputPrecision::Tiled).1;
        let fine = cpu_layout(GgmlDType::Q8_0, 512, InputPrecision::Fine).1;
        if x86_int8_tiles() {
            assert_eq!((tiled, fine), (768, 544));
        } else {
            assert_eq!((tiled, fine), (576, 512));
        }
    }
}
