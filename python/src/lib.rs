//! `r1_rewards`: the R1 rule-based rewards for Python, in TRL's reward-function convention
//! (`f(completions, **kwargs) -> list[float | None]`, dataset columns arriving as keyword lists) and verl's
//! `compute_score(data_source, solution_str, ground_truth, extra_info=None)`.
//!
//! Completions are plain strings or conversations (lists of `{"role", "content"}` messages; the last
//! assistant message is scored). Batches are scored in parallel on rayon's pool with the GIL released.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use rayon::prelude::*;
use rewards::code::{CodeReward, SandboxConfig};
use rewards::{Reward, RewardError, Sample};

/// The text to score from one completion: a string, or the last assistant message of a conversation
/// (the last message when none is marked as the assistant's).
fn completion_text(item: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = item.downcast::<PyString>() {
        return s.extract::<String>();
    }
    if let Ok(msgs) = item.downcast::<PyList>() {
        let mut last: Option<String> = None;
        let mut last_assistant: Option<String> = None;
        for m in msgs.iter() {
            let d = m.downcast::<PyDict>().map_err(|_| {
                PyTypeError::new_err("a conversational completion must be a list of {'role', 'content'} dicts")
            })?;
            let content = match d.get_item("content")? {
                Some(c) => {
                    c.extract::<String>().map_err(|_| PyTypeError::new_err("message `content` must be a str"))?
                }
                None => return Err(PyValueError::new_err("a message has no `content`")),
            };
            let role: Option<String> = d.get_item("role")?.map(|r| r.extract()).transpose()?;
            if role.as_deref() == Some("assistant") {
                last_assistant = Some(content.clone());
            }
            last = Some(content);
        }
        return last_assistant.or(last).ok_or_else(|| PyValueError::new_err("an empty conversation"));
    }
    Err(PyTypeError::new_err(format!(
        "a completion must be a str or a list of messages, got {}",
        item.get_type().name()?
    )))
}

fn completions_text(completions: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let list = completions.downcast::<PyList>().map_err(|_| PyTypeError::new_err("`completions` must be a list"))?;
    list.iter().map(|c| completion_text(&c)).collect()
}

/// A per-sample column: a list of the batch's length, or one value for every sample.
fn column<'py>(v: &Bound<'py, PyAny>, n: usize, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = v.downcast::<PyList>() {
        if list.len() != n {
            return Err(PyValueError::new_err(format!("`{name}` has {} entries for {n} completions", list.len())));
        }
        return Ok(list.iter().collect());
    }
    Ok(vec![v.clone(); n])
}

fn py_err(e: RewardError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn to_json(v: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let json = v.py().import("json")?.call_method1("dumps", (v,))?;
    serde_json::from_str(&json.extract::<String>()?).map_err(|e| PyValueError::new_err(format!("not JSON data: {e}")))
}

/// Score `texts` with one reward per sample, in parallel with the GIL released.
/// A reward that reads the completion only, over a batch.
fn completion_only(py: Python<'_>, reward: &(dyn Reward + Sync), completions: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    let texts = completions_text(completions)?;
    let n = texts.len();
    batch(py, reward, texts, vec![Sample::new(); n])
}

fn batch(py: Python<'_>, reward: &(dyn Reward + Sync), texts: Vec<String>, samples: Vec<Sample>) -> PyResult<Vec<f64>> {
    let out: Vec<Result<f64, RewardError>> = py.allow_threads(|| {
        texts.par_iter().zip(samples.par_iter()).map(|(t, s)| reward.score(t, s).map(|x| x.value)).collect()
    });
    out.into_iter().map(|r| r.map_err(py_err)).collect()
}

/// Accuracy: 1.0 when the completion's final answer equals the gold `solution` (bare, or the last
/// `\boxed{}` of a worked solution; several separate boxes form a set), 0.0 when not, None when the gold
/// answer is empty (nothing to judge against).
#[pyfunction]
#[pyo3(signature = (completions, solution, **kwargs))]
fn accuracy_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    solution: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<Option<f64>>> {
    let _ = kwargs;
    let texts = completions_text(completions)?;
    let golds: Vec<String> =
        column(solution, texts.len(), "solution")?.iter().map(|g| g.extract::<String>()).collect::<PyResult<_>>()?;
    Ok(py.allow_threads(|| {
        texts
            .par_iter()
            .zip(golds.par_iter())
            .map(|(t, g)| {
                if g.trim().is_empty() {
                    return None;
                }
                Some(if rewards::math::verify(g, t).correct { 1.0 } else { 0.0 })
            })
            .collect()
    }))
}

/// Strict R1 format: `<think>\n…\n</think>\n<answer>\n…\n</answer>` and nothing after it; 1.0 or 0.0.
#[pyfunction]
#[pyo3(signature = (completions, **kwargs))]
fn format_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<f64>> {
    let _ = kwargs;
    completion_only(py, &rewards::shaping::Format, completions)
}

/// 0.25 for each of the four R1 tags present exactly once.
#[pyfunction]
#[pyo3(signature = (completions, **kwargs))]
fn tag_count_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<f64>> {
    let _ = kwargs;
    completion_only(py, &rewards::shaping::TagCount, completions)
}

/// R1's language-consistency reward: the share of chain-of-thought words in the target `language`
/// (a column or one code for all; default "en").
#[pyfunction]
#[pyo3(signature = (completions, language=None, **kwargs))]
fn language_consistency_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    language: Option<&Bound<'_, PyAny>>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<f64>> {
    let _ = kwargs;
    let texts = completions_text(completions)?;
    let n = texts.len();
    let samples = match language {
        None => vec![Sample::new(); n],
        Some(l) => column(l, n, "language")?
            .iter()
            .map(|x| {
                let mut s = Sample::new();
                s.insert("language".into(), serde_json::Value::String(x.extract::<String>()?));
                Ok(s)
            })
            .collect::<PyResult<_>>()?,
    };
    batch(py, &rewards::shaping::LanguageConsistency, texts, samples)
}

/// Code reward: the fraction of stdin/stdout tests the completion's last fenced code block passes, each in
/// a fresh sandbox. Tests per sample in `tests` (`[{"input", "output"}, …]` or `{"inputs", "outputs"}`) or
/// open-r1's `verification_info` (`{"test_cases": […]}`). Raises when the machine allows no isolation unless
/// `allow_unisolated=True`.
#[pyfunction]
#[pyo3(signature = (completions, tests=None, verification_info=None, allow_unisolated=false, **kwargs))]
fn code_reward(
    py: Python<'_>,
    completions: &Bound<'_, PyAny>,
    tests: Option<&Bound<'_, PyAny>>,
    verification_info: Option<&Bound<'_, PyAny>>,
    allow_unisolated: bool,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<f64>> {
    let _ = kwargs;
    let texts = completions_text(completions)?;
    let n = texts.len();
    let per_sample: Vec<serde_json::Value> = match (tests, verification_info) {
        // One test list for the whole batch (`[{"input", "output"}, …]`), or one entry per completion.
        (Some(t), _) => match to_json(t)? {
            serde_json::Value::Array(xs) if xs.first().is_some_and(|x| x.get("input").is_some()) => {
                vec![serde_json::Value::Array(xs); n]
            }
            _ => column(t, n, "tests")?.iter().map(to_json).collect::<PyResult<_>>()?,
        },
        (None, Some(v)) => column(v, n, "verification_info")?
            .iter()
            .map(|x| {
                let j = to_json(x)?;
                Ok(j.get("test_cases").cloned().unwrap_or(j))
            })
            .collect::<PyResult<_>>()?,
        (None, None) => return Err(PyValueError::new_err("code_reward needs `tests` or `verification_info`")),
    };
    let samples = per_sample
        .into_iter()
        .map(|t| {
            let mut s = Sample::new();
            s.insert("tests".into(), t);
            s
        })
        .collect();
    let reward = CodeReward { config: SandboxConfig { allow_unisolated, ..SandboxConfig::default() } };
    batch(py, &reward, texts, samples)
}

/// verl's reward entry point: 1.0 when `solution_str`'s final answer equals `ground_truth`, else 0.0
/// (`data_source` and `extra_info` are accepted and not needed).
#[pyfunction]
#[pyo3(signature = (data_source, solution_str, ground_truth, extra_info=None))]
fn compute_score(
    py: Python<'_>,
    data_source: &Bound<'_, PyAny>,
    solution_str: String,
    ground_truth: &Bound<'_, PyAny>,
    extra_info: Option<&Bound<'_, PyAny>>,
) -> PyResult<f64> {
    let _ = (data_source, extra_info);
    let gold: String = match ground_truth.extract::<String>() {
        Ok(s) => s,
        Err(_) => ground_truth.str()?.extract::<String>()?,
    };
    Ok(py.allow_threads(|| if rewards::math::verify(&gold, &solution_str).correct { 1.0 } else { 0.0 }))
}

/// Score many (completion, gold) pairs in parallel: verl's batched form.
#[pyfunction]
fn compute_score_batch(py: Python<'_>, solution_strs: Vec<String>, ground_truths: Vec<String>) -> PyResult<Vec<f64>> {
    if solution_strs.len() != ground_truths.len() {
        return Err(PyValueError::new_err(format!(
            "{} solutions for {} ground truths",
            solution_strs.len(),
            ground_truths.len()
        )));
    }
    Ok(py.allow_threads(|| {
        solution_strs
            .par_iter()
            .zip(ground_truths.par_iter())
            .map(|(s, g)| if rewards::math::verify(g, s).correct { 1.0 } else { 0.0 })
            .collect()
    }))
}

/// Is `pred` (an answer, already extracted) equivalent to `gold`?
#[pyfunction]
fn answers_equivalent(py: Python<'_>, gold: String, pred: String) -> bool {
    py.allow_threads(|| rewards::math::answers_equivalent(&gold, &pred))
}

/// The module.
#[pymodule]
fn r1_rewards(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(accuracy_reward, m)?)?;
    m.add_function(wrap_pyfunction!(format_reward, m)?)?;
    m.add_function(wrap_pyfunction!(tag_count_reward, m)?)?;
    m.add_function(wrap_pyfunction!(language_consistency_reward, m)?)?;
    m.add_function(wrap_pyfunction!(code_reward, m)?)?;
    m.add_function(wrap_pyfunction!(compute_score, m)?)?;
    m.add_function(wrap_pyfunction!(compute_score_batch, m)?)?;
    m.add_function(wrap_pyfunction!(answers_equivalent, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
