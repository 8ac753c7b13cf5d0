//! The subset of NeMo's `model_config.yaml` the Conformer engine supports:
//! the mel front end (`preprocessor`), the cache-aware FastConformer encoder
//! (`encoder`) and where the CTC head lives (`decoder` or, for hybrid
//! RNN-T/CTC models, `aux_ctc`). Any setting that would change the maths and
//! is not implemented is refused with an error naming the key.

use anyhow::{Context, Result, bail};
use serde_yaml_ng::Value;

/// Norm of the convolution module, after the depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvNorm {
    BatchNorm,
    LayerNorm,
}

/// The mel-spectrogram front end (NeMo's `AudioToMelSpectrogramPreprocessor`
/// with `normalize: NA`).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureConfig {
    pub sample_rate: u32,
    /// Window length in samples (window_size x sample_rate).
    pub win_length: usize,
    /// Hop in samples (window_stride x sample_rate).
    pub hop_length: usize,
    pub n_fft: usize,
    pub n_mels: usize,
    /// Pre-emphasis coefficient (NeMo's default 0.97), none when null.
    pub preemph: Option<f32>,
    pub lowfreq: f32,
    pub highfreq: Option<f32>,
    pub mag_power: f32,
    /// Added to the mel energies before the log.
    pub log_guard: f32,
}

impl FeatureConfig {
    /// NeMo's defaults at 16 kHz: 25 ms Hann window, 10 ms hop, 512-point
    /// FFT, pre-emphasis 0.97, power spectrum, log(x + 2^-24).
    pub fn nemo_default(n_mels: usize) -> FeatureConfig {
        FeatureConfig {
            sample_rate: 16_000,
            win_length: 400,
            hop_length: 160,
            n_fft: 512,
            n_mels,
            preemph: Some(0.97),
            lowfreq: 0.0,
            highfreq: None,
            mag_power: 2.0,
            log_guard: 2f32.powi(-24),
        }
    }
}

/// The cache-aware FastConformer encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub feat_in: usize,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub ff_expansion_factor: usize,
    pub subsampling_conv_channels: usize,
    pub conv_kernel_size: usize,
    pub conv_norm: ConvNorm,
    /// `[left, right]` attention contexts in encoder frames (80 ms each);
    /// the first is the model's default.
    pub att_context_sizes: Vec<[usize; 2]>,
    /// Causal (left-padded) subsampling convolutions.
    pub causal_downsampling: bool,
    /// Scale the subsampled input by sqrt(d_model).
    pub xscaling: bool,
    /// Biases in the feed-forward, attention and convolution layers.
    pub use_bias: bool,
}

/// Subsampling factor of `dw_striding` (three stride-2 convolutions).
pub const SUBSAMPLING: usize = 8;

impl EncoderConfig {
    /// The FastConformer-Large streaming configuration (17 layers, d 512,
    /// 8 heads; 109.4 M parameters with a 1024-token CTC head, NeMo's ~114 M
    /// counts the hybrid model's RNN-T networks too), with NeMo's four
    /// look-ahead modes.
    pub fn large() -> EncoderConfig {
        EncoderConfig {
            feat_in: 80,
            n_layers: 17,
            d_model: 512,
            n_heads: 8,
            ff_expansion_factor: 4,
            subsampling_conv_channels: 256,
            conv_kernel_size: 9,
            conv_norm: ConvNorm::BatchNorm,
            att_context_sizes: vec![[70, 13], [70, 6], [70, 1], [70, 0]],
            causal_downsampling: true,
            xscaling: true,
            use_bias: true,
        }
    }

    /// A small configuration (3 layers, d 64) for tests and generated
    /// example models.
    pub fn tiny(att_context_sizes: Vec<[usize; 2]>) -> EncoderConfig {
        EncoderConfig {
            feat_in: 80,
            n_layers: 3,
            d_model: 64,
            n_heads: 4,
            ff_expansion_factor: 4,
            subsampling_conv_channels: 32,
            conv_kernel_size: 9,
            conv_norm: ConvNorm::BatchNorm,
            att_context_sizes,
            causal_downsampling: true,
            xscaling: true,
            use_bias: true,
        }
    }

    /// Frames per chunk for a right context: the chunk is the frame and the
    /// `right` frames after it (NeMo's `chunked_limited` style).
    pub fn chunk_frames(context: [usize; 2]) -> usize {
        context[1] + 1
    }

    /// Finds the attention context with this look-ahead (right context).
    pub fn context_for_lookahead(&self, lookahead: usize) -> Result<[usize; 2]> {
        self.att_context_sizes
            .iter()
            .copied()
            .find(|c| c[1] == lookahead)
            .with_context(|| {
                format!(
                    "the model has no look-ahead of {lookahead} frames; its att_context_size allows {:?}",
                    self.att_context_sizes
                )
            })
    }
}

/// Everything the engine takes from `model_config.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub features: FeatureConfig,
    pub encoder: EncoderConfig,
    /// Weight prefix of the CTC head: `decoder` (CTC models) or
    /// `ctc_decoder` (hybrid RNN-T/CTC models).
    pub ctc_prefix: String,
    /// The character vocabulary of char-based models (no tokenizer file).
    pub vocabulary: Option<Vec<String>>,
}

fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn usize_of(map: &Value, section: &str, key: &str) -> Result<Option<usize>> {
    match get(map, key) {
        None => Ok(None),
        Some(v) => {
            let n = v
                .as_i64()
                .with_context(|| format!("{section}.{key} must be an integer, got {v:?}"))?;
            if n < 0 {
                return Ok(None);
            }
            Ok(Some(n as usize))
        }
    }
}

fn required(map: &Value, section: &str, key: &str) -> Result<usize> {
    usize_of(map, section, key)?.with_context(|| format!("{section}.{key} is missing"))
}

fn f32_of(map: &Value, section: &str, key: &str) -> Result<Option<f32>> {
    match get(map, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .with_context(|| format!("{section}.{key} must be a number, got {v:?}")),
    }
}

fn str_of<'a>(map: &'a Value, key: &str) -> Option<&'a str> {
    get(map, key).and_then(Value::as_str)
}

fn bool_of(map: &Value, section: &str, key: &str, default: bool) -> Result<bool> {
    match get(map, key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .with_context(|| format!("{section}.{key} must be true or false, got {v:?}")),
    }
}

/// Keys of a section that the engine reads.
const ENCODER_KEYS: &[&str] = &[
    "_target_",
    "feat_in",
    "feat_out",
    "n_layers",
    "d_model",
    "n_heads",
    "ff_expansion_factor",
    "subsampling",
    "subsampling_factor",
    "subsampling_conv_channels",
    "subsampling_conv_chunking_factor",
    "conv_kernel_size",
    "conv_norm_type",
    "conv_context_size",
    "att_context_size",
    "att_context_style",
    "att_context_probs",
    "causal_downsampling",
    "xscaling",
    "self_attention_model",
    "untie_biases",
    "use_bias",
    "pos_emb_max_len",
    "reduction",
    "reduction_position",
    "reduction_factor",
    "global_tokens",
    "global_tokens_spacing",
    "global_attn_separate",
];

/// Keys that only matter for training.
const ENCODER_TRAINING_KEYS: &[&str] = &[
    "dropout",
    "dropout_pre_encoder",
    "dropout_emb",
    "dropout_att",
    "stochastic_depth_drop_prob",
    "stochastic_depth_mode",
    "stochastic_depth_start_layer",
    "sync_max_audio_length",
];

const PREPROCESSOR_KEYS: &[&str] = &[
    "_target_",
    "sample_rate",
    "normalize",
    "window_size",
    "window_stride",
    "window",
    "features",
    "n_fft",
    "log",
    "frame_splicing",
    "dither",
    "pad_to",
    "pad_value",
    "lowfreq",
    "highfreq",
    "mag_power",
    "log_zero_guard_type",
    "log_zero_guard_value",
    "preemph",
    "exact_pad",
    "mel_norm",
    "stft_exact_pad",
    "stft_conv",
    "use_grads",
    "rng",
    "nb_augmentation_prob",
    "nb_max_freq",
    "use_torchaudio",
];

fn check_keys(map: &Value, section: &str, known: &[&[&str]]) -> Result<()> {
    let Some(mapping) = map.as_mapping() else {
        bail!("{section} must be a mapping");
    };
    for key in mapping.keys() {
        let key = key.as_str().unwrap_or_default();
        if !known.iter().any(|list| list.contains(&key)) {
            bail!("{section}.{key} is not supported by the Conformer engine");
        }
    }
    Ok(())
}

fn parse_features(pre: &Value) -> Result<FeatureConfig> {
    const S: &str = "preprocessor";
    check_keys(pre, S, &[PREPROCESSOR_KEYS])?;
    let sample_rate = usize_of(pre, S, "sample_rate")?.unwrap_or(16_000) as u32;
    if sample_rate != 16_000 {
        bail!("{S}.sample_rate must be 16000, got {sample_rate}");
    }
    match str_of(pre, "normalize") {
        None | Some("NA") | Some("None") | Some("none") => {}
        Some(other) => bail!(
            "{S}.normalize is {other:?}: only \"NA\" streams (per-utterance normalization needs the whole utterance); NeMo's cache-aware streaming models use \"NA\""
        ),
    }
    if let Some(w) = str_of(pre, "window")
        && w != "hann"
    {
        bail!("{S}.window must be hann, got {w}");
    }
    if !bool_of(pre, S, "log", true)? {
        bail!("{S}.log must be true");
    }
    if usize_of(pre, S, "frame_splicing")?.unwrap_or(1) != 1 {
        bail!("{S}.frame_splicing must be 1");
    }
    if bool_of(pre, S, "exact_pad", false)? || bool_of(pre, S, "stft_exact_pad", false)? {
        bail!("{S}.exact_pad must be false");
    }
    if let Some(guard) = str_of(pre, "log_zero_guard_type")
        && guard != "add"
    {
        bail!("{S}.log_zero_guard_type must be add, got {guard}");
    }
    if let Some(norm) = str_of(pre, "mel_norm")
        && norm != "slaney"
    {
        bail!("{S}.mel_norm must be slaney, got {norm}");
    }
    if let Some(v) = f32_of(pre, S, "pad_value")?
        && v != 0.0
    {
        bail!("{S}.pad_value must be 0");
    }
    let win = f32_of(pre, S, "window_size")?.unwrap_or(0.025);
    let hop = f32_of(pre, S, "window_stride")?.unwrap_or(0.01);
    let win_length = (win * sample_rate as f32).round() as usize;
    let hop_length = (hop * sample_rate as f32).round() as usize;
    let n_fft = usize_of(pre, S, "n_fft")?.unwrap_or_else(|| win_length.next_power_of_two());
    if win_length > n_fft || hop_length == 0 {
        bail!("{S}: window {win_length} and hop {hop_length} do not fit n_fft {n_fft}");
    }
    let log_guard = match get(pre, "log_zero_guard_value") {
        None => 2f32.powi(-24),
        Some(Value::String(s)) if s == "tiny" => f32::MIN_POSITIVE,
        Some(Value::String(s)) if s == "eps" => f32::EPSILON,
        Some(_) => f32_of(pre, S, "log_zero_guard_value")?.unwrap_or(2f32.powi(-24)),
    };
    Ok(FeatureConfig {
        sample_rate,
        win_length,
        hop_length,
        n_fft,
        n_mels: usize_of(pre, S, "features")?.unwrap_or(64),
        preemph: match get(pre, "preemph") {
            None if pre.get("preemph").is_some() => None,
            _ => Some(f32_of(pre, S, "preemph")?.unwrap_or(0.97)),
        },
        lowfreq: f32_of(pre, S, "lowfreq")?.unwrap_or(0.0),
        highfreq: f32_of(pre, S, "highfreq")?,
        mag_power: f32_of(pre, S, "mag_power")?.unwrap_or(2.0),
        log_guard,
    })
}

fn parse_contexts(value: Option<&Value>) -> Result<Vec<[usize; 2]>> {
    const K: &str = "encoder.att_context_size";
    let Some(value) = value else {
        bail!("{K} is missing: the model is not a limited-context (streaming) model");
    };
    let pair = |v: &Value| -> Result<[usize; 2]> {
        let items = v
            .as_sequence()
            .filter(|s| s.len() == 2)
            .with_context(|| format!("{K} entries must be [left, right], got {v:?}"))?;
        let mut out = [0usize; 2];
        for (slot, item) in out.iter_mut().zip(items) {
            let n = item
                .as_i64()
                .with_context(|| format!("{K} must hold integers, got {item:?}"))?;
            if n < 0 {
                bail!(
                    "{K} {v:?} has an unlimited side: only limited left and right contexts stream with caches"
                );
            }
            *slot = n as usize;
        }
        Ok(out)
    };
    let seq = value
        .as_sequence()
        .with_context(|| format!("{K} must be a list, got {value:?}"))?;
    if seq.first().is_some_and(Value::is_sequence) {
        seq.iter().map(pair).collect()
    } else {
        Ok(vec![pair(value)?])
    }
}

fn parse_encoder(enc: &Value, feat_in_default: usize) -> Result<EncoderConfig> {
    const S: &str = "encoder";
    check_keys(enc, S, &[ENCODER_KEYS, ENCODER_TRAINING_KEYS])?;
    if let Some(target) = str_of(enc, "_target_")
        && !target.ends_with("ConformerEncoder")
    {
        bail!("{S}._target_ is {target}: only ConformerEncoder is supported");
    }
    let d_model = required(enc, S, "d_model")?;
    match str_of(enc, "subsampling") {
        Some("dw_striding") => {}
        other => bail!("{S}.subsampling must be dw_striding (FastConformer), got {other:?}"),
    }
    let factor = usize_of(enc, S, "subsampling_factor")?.unwrap_or(4);
    if factor != SUBSAMPLING {
        bail!("{S}.subsampling_factor must be 8, got {factor}");
    }
    if let Some(model) = str_of(enc, "self_attention_model")
        && model != "rel_pos"
    {
        bail!("{S}.self_attention_model must be rel_pos, got {model}");
    }
    if let Some(style) = str_of(enc, "att_context_style")
        && style != "chunked_limited"
    {
        bail!(
            "{S}.att_context_style must be chunked_limited (the cache-aware streaming style), got {style}"
        );
    }
    if !bool_of(enc, S, "untie_biases", true)? {
        bail!("{S}.untie_biases must be true");
    }
    if let Some(out) = usize_of(enc, S, "feat_out")?
        && out != d_model
    {
        bail!("{S}.feat_out must be -1 (no output projection), got {out}");
    }
    if get(enc, "reduction").is_some() {
        bail!("{S}.reduction is not supported");
    }
    if usize_of(enc, S, "global_tokens")?.unwrap_or(0) != 0 {
        bail!("{S}.global_tokens is not supported");
    }
    let kernel = usize_of(enc, S, "conv_kernel_size")?.unwrap_or(31);
    match get(enc, "conv_context_size") {
        Some(Value::String(s)) if s == "causal" => {}
        Some(Value::Sequence(items))
            if items.len() == 2
                && items[0].as_i64() == Some(kernel as i64 - 1)
                && items[1].as_i64() == Some(0) => {}
        other => bail!(
            "{S}.conv_context_size must be causal (or [kernel-1, 0]) for cache-aware streaming, got {other:?}"
        ),
    }
    let conv_norm = match str_of(enc, "conv_norm_type").unwrap_or("batch_norm") {
        "batch_norm" => ConvNorm::BatchNorm,
        "layer_norm" => ConvNorm::LayerNorm,
        other => bail!("{S}.conv_norm_type must be batch_norm or layer_norm, got {other}"),
    };
    let n_heads = required(enc, S, "n_heads")?;
    if n_heads == 0 || d_model % n_heads != 0 {
        bail!("{S}.n_heads ({n_heads}) must divide d_model ({d_model})");
    }
    Ok(EncoderConfig {
        feat_in: usize_of(enc, S, "feat_in")?.unwrap_or(feat_in_default),
        n_layers: required(enc, S, "n_layers")?,
        d_model,
        n_heads,
        ff_expansion_factor: usize_of(enc, S, "ff_expansion_factor")?.unwrap_or(4),
        subsampling_conv_channels: usize_of(enc, S, "subsampling_conv_channels")?
            .unwrap_or(d_model),
        conv_kernel_size: kernel,
        conv_norm,
        att_context_sizes: parse_contexts(get(enc, "att_context_size"))?,
        causal_downsampling: bool_of(enc, S, "causal_downsampling", false)?,
        xscaling: bool_of(enc, S, "xscaling", true)?,
        use_bias: bool_of(enc, S, "use_bias", true)?,
    })
}

impl ModelConfig {
    /// Parses NeMo's `model_config.yaml` text.
    pub fn from_yaml(text: &str) -> Result<ModelConfig> {
        let root: Value = serde_yaml_ng::from_str(text).context("model_config.yaml is not YAML")?;
        // Some exports nest everything under `model:`.
        let root = match root.get("model") {
            Some(inner) if inner.get("encoder").is_some() => inner.clone(),
            _ => root,
        };
        let pre = root
            .get("preprocessor")
            .context("model_config.yaml has no preprocessor")?;
        let features = parse_features(pre)?;
        let enc = root
            .get("encoder")
            .context("model_config.yaml has no encoder")?;
        let encoder = parse_encoder(enc, features.n_mels)?;
        if encoder.feat_in != features.n_mels {
            bail!(
                "encoder.feat_in ({}) differs from preprocessor.features ({})",
                encoder.feat_in,
                features.n_mels
            );
        }
        let decoder_target = root
            .get("decoder")
            .and_then(|d| str_of(d, "_target_"))
            .unwrap_or_default();
        let (ctc_prefix, ctc_section) = if decoder_target.ends_with("ConvASRDecoder") {
            ("decoder", root.get("decoder"))
        } else if let Some(aux) = root.get("aux_ctc") {
            ("ctc_decoder", aux.get("decoder"))
        } else {
            bail!(
                "the model has no CTC head (decoder._target_ is {decoder_target:?} and there is no aux_ctc): only CTC decoding is supported"
            );
        };
        let vocabulary = ctc_section
            .and_then(|d| d.get("vocabulary"))
            .and_then(Value::as_sequence)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.iter()
                    .map(|t| t.as_str().unwrap_or_default().to_string())
                    .collect()
            });
        Ok(ModelConfig {
            features,
            encoder,
            ctc_prefix: ctc_prefix.to_string(),
            vocabulary,
        })
    }

    /// A `model_config.yaml` for this configuration, as NeMo writes it (the
    /// keys this engine reads), with a CTC head of `vocab_size` tokens.
    pub fn to_yaml(&self, vocab_size: usize) -> String {
        let e = &self.encoder;
        let f = &self.features;
        let contexts: Vec<String> = e
            .att_context_sizes
            .iter()
            .map(|c| format!("[{}, {}]", c[0], c[1]))
            .collect();
        format!(
            "sample_rate: {sr}
preprocessor:
  _target_: nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor
  sample_rate: {sr}
  normalize: NA
  window_size: {ws}
  window_stride: {hs}
  window: hann
  features: {mels}
  n_fft: {nfft}
  log: true
  frame_splicing: 1
  dither: 1.0e-05
  pad_to: 0
  pad_value: 0.0
encoder:
  _target_: nemo.collections.asr.modules.ConformerEncoder
  feat_in: {mels}
  feat_out: -1
  n_layers: {layers}
  d_model: {d}
  subsampling: dw_striding
  subsampling_factor: 8
  subsampling_conv_channels: {ch}
  causal_downsampling: {causal}
  ff_expansion_factor: {ff}
  self_attention_model: rel_pos
  n_heads: {heads}
  att_context_size: [{contexts}]
  att_context_style: chunked_limited
  xscaling: {xs}
  untie_biases: true
  pos_emb_max_len: 5000
  conv_kernel_size: {k}
  conv_norm_type: {norm}
  conv_context_size: causal
  use_bias: {bias}
  dropout: 0.1
  dropout_pre_encoder: 0.1
  dropout_emb: 0.0
  dropout_att: 0.1
decoder:
  _target_: nemo.collections.asr.modules.ConvASRDecoder
  feat_in: {d}
  num_classes: {vocab}
  vocabulary: []
",
            sr = f.sample_rate,
            ws = f.win_length as f32 / f.sample_rate as f32,
            hs = f.hop_length as f32 / f.sample_rate as f32,
            mels = f.n_mels,
            nfft = f.n_fft,
            layers = e.n_layers,
            d = e.d_model,
            ch = e.subsampling_conv_channels,
            causal = e.causal_downsampling,
            ff = e.ff_expansion_factor,
            heads = e.n_heads,
            contexts = contexts.join(", "),
            xs = e.xscaling,
            k = e.conv_kernel_size,
            norm = match e.conv_norm {
                ConvNorm::BatchNorm => "batch_norm",
                ConvNorm::LayerNorm => "layer_norm",
            },
            bias = e.use_bias,
            vocab = vocab_size,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModelConfig {
        ModelConfig {
            features: FeatureConfig::nemo_default(80),
            encoder: EncoderConfig::large(),
            ctc_prefix: "decoder".into(),
            vocabulary: None,
        }
    }

    #[test]
    fn written_config_parses_back_the_same() {
        let config = sample();
        let parsed = ModelConfig::from_yaml(&config.to_yaml(1024)).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(parsed.encoder.context_for_lookahead(6).unwrap(), [70, 6]);
        let err = parsed.encoder.context_for_lookahead(3).unwrap_err();
        assert!(err.to_string().contains("look-ahead of 3"), "{err}");
    }

    #[test]
    fn unsupported_settings_are_named() {
        let text = sample().to_yaml(16);
        for (from, to, key) in [
            (
                "normalize: NA",
                "normalize: per_feature",
                "preprocessor.normalize",
            ),
            (
                "att_context_style: chunked_limited",
                "att_context_style: regular",
                "encoder.att_context_style",
            ),
            (
                "conv_context_size: causal",
                "conv_context_size: null",
                "encoder.conv_context_size",
            ),
            (
                "subsampling: dw_striding",
                "subsampling: striding",
                "encoder.subsampling",
            ),
            (
                "  xscaling: true",
                "  xscaling: true\n  mystery_knob: 3",
                "encoder.mystery_knob",
            ),
        ] {
            let err = ModelConfig::from_yaml(&text.replace(from, to)).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_single_context_and_hybrid_ctc_head_parse() {
        let text = sample()
            .to_yaml(16)
            .replace(
                "att_context_size: [[70, 13], [70, 6], [70, 1], [70, 0]]",
                "att_context_size: [70, 1]",
            )
            .replace("ConvASRDecoder", "RNNTDecoder")
            + "aux_ctc:\n  decoder:\n    _target_: nemo.collections.asr.modules.ConvASRDecoder\n    vocabulary: [a, b]\n";
        let parsed = ModelConfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.encoder.att_context_sizes, vec![[70, 1]]);
        assert_eq!(parsed.ctc_prefix, "ctc_decoder");
        assert_eq!(
            parsed.vocabulary,
            Some(vec!["a".to_string(), "b".to_string()])
        );
    }
}
