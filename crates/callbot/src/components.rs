//! Component lifecycle: build new first, swap atomically, shut the old down.
//!
//! The bot's heavy, shared components (the speech-to-text engine, the language model
//! client, the speech synthesizer) live in [`Components`]. Each one sits in a [`Slot`]
//! with the settings it was built from (its *key*) and a generation number.
//!
//! The settings-change path has three steps, so the slow one runs without the lock
//! that new calls need to take their components:
//! 1. [`Components::plan`] (cheap, under the caller's lock): which components' keys
//!    changed (and whether the factory wants the LLM refreshed anyway, see
//!    [`ComponentFactory::llm_needs_refresh`]).
//! 2. [`RebuildPlan::build`] (slow, **without** the lock): a new component is **built
//!    first** for each of them, while the old ones keep serving new calls. If any build
//!    fails, the components already built for this attempt are shut down (nothing
//!    half-built survives), **nothing changes**, and the error names the failing setting
//!    ([`SettingsError`]).
//! 3. [`Components::install`] (cheap, under the lock): every new component is installed
//!    at once (`&mut self`: callers keep `Components` behind one lock, so a new call
//!    sees either all old or all new components), and the replaced ones **retire**.
//!    A [`BuiltComponents`] dropped instead of installed shuts its components down.
//!
//! Callers serialise reconfigurations (the bot holds a separate mutex across the three
//! steps); `install` refuses a plan made before another install. [`Components::reconfigure`]
//! does all three at once for callers that do not care about the lock.
//!
//! **Live calls keep the components they started with until they end**: a call takes a
//! [`CallComponents`] snapshot (three `Arc`s) when it starts. A retired component is
//! shut down by [`Components::reap`] as soon as no call holds it any more; the bot calls
//! `reap` when a call ends. [`Components::shutdown`] shuts everything down, waiting (up
//! to its deadline) for calls still holding retired components; each component's own
//! `Drop` stays the safety net for a holder that outlives the deadline.
//!
//! Builders are a [`ComponentFactory`], so tests plug in fakes (see the tests here,
//! which fail a chosen component) and the bot plugs in the real layers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::settings::{Settings, SettingsError};

/// A component the bot owns: it can be shut down within a deadline.
pub trait Managed: Send + Sync + 'static {
    /// Stops the component's threads and frees its resources, bounded by `deadline`;
    /// idempotent. Returns what happened.
    fn shutdown(&mut self, deadline: Instant) -> ComponentReport;
}

/// What shutting one component down did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReport {
    /// Which component (`"stt"`, `"llm"`, `"tts"`).
    pub component: &'static str,
    /// Its generation (1 for the first one built).
    pub generation: u64,
    /// Whether it stopped completely within the deadline.
    pub clean: bool,
    /// The component's own account (its report, formatted).
    pub detail: String,
    /// How long its shutdown took.
    pub elapsed: Duration,
}

/// One component and the key (settings) it was built from, plus the retired ones still
/// held by live calls.
#[derive(Debug)]
pub struct Slot<T, K> {
    name: &'static str,
    current: Option<Arc<T>>,
    key: K,
    generation: u64,
    retiring: Vec<(u64, Arc<T>)>,
}

impl<T: Managed, K: Clone + PartialEq> Slot<T, K> {
    /// A slot holding `handle` (generation 1) built from `key`.
    pub fn new(name: &'static str, handle: T, key: K) -> Self {
        Self {
            name,
            current: Some(Arc::new(handle)),
            key,
            generation: 1,
            retiring: Vec::new(),
        }
    }

    /// The current component, for a new call; `None` after shutdown.
    pub fn current(&self) -> Option<Arc<T>> {
        self.current.clone()
    }

    /// The current component's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The key the current component was built from.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Whether settings with `key` need a new component.
    pub fn needs_rebuild(&self, key: &K) -> bool {
        self.key != *key || self.current.is_none()
    }

    /// Retired components not shut down yet (still held by calls).
    pub fn retiring(&self) -> usize {
        self.retiring.len()
    }

    /// Installs `handle` as the current component; the old one retires.
    pub fn install(&mut self, handle: T, key: K) -> u64 {
        if let Some(old) = self.current.replace(Arc::new(handle)) {
            self.retiring.push((self.generation, old));
        }
        self.key = key;
        self.generation += 1;
        self.generation
    }

    /// Shuts down the retired components no call holds any more.
    pub fn reap(&mut self, deadline: Instant) -> Vec<ComponentReport> {
        let mut reports = Vec::new();
        let name = self.name;
        self.retiring
            .retain_mut(|(generation, handle)| match Arc::get_mut(handle) {
                Some(component) => {
                    reports.push(shut(name, *generation, component, deadline));
                    false
                }
                None => true,
            });
        reports
    }

    /// Shuts down the current and every retired component, waiting up to `deadline`
    /// for calls to let go of them. Components still held at the deadline are
    /// reported as not clean and released (their own `Drop` stops them when the last
    /// holder lets go). Idempotent.
    pub fn shutdown(&mut self, deadline: Instant) -> Vec<ComponentReport> {
        if let Some(current) = self.current.take() {
            self.retiring.push((self.generation, current));
        }
        let mut reports = Vec::new();
        loop {
            reports.extend(self.reap(deadline));
            if self.retiring.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2).min(deadline - Instant::now()));
        }
        for (generation, handle) in self.retiring.drain(..) {
            reports.push(ComponentReport {
                component: self.name,
                generation,
                clean: false,
                detail: format!(
                    "still held by {} live call(s) at the deadline; released",
                    Arc::strong_count(&handle).saturating_sub(1)
                ),
                elapsed: Duration::ZERO,
            });
        }
        reports
    }
}

fn shut<T: Managed>(
    name: &'static str,
    generation: u64,
    component: &mut T,
    deadline: Instant,
) -> ComponentReport {
    let started = Instant::now();
    let mut report = component.shutdown(deadline);
    report.component = name;
    report.generation = generation;
    report.elapsed = started.elapsed();
    tracing::debug!(component = name, generation, clean = report.clean, detail = %report.detail, "component shut down");
    report
}

/// Builds the bot's components from settings. The bot's factory builds the real
/// layers; tests build fakes.
pub trait ComponentFactory {
    /// Speech to text.
    type Stt: Managed;
    /// Language model.
    type Llm: Managed;
    /// Speech synthesis.
    type Tts: Managed;
    /// The part of the settings the STT component is built from.
    type SttKey: Clone + PartialEq + Send;
    /// The part of the settings the LLM component is built from.
    type LlmKey: Clone + PartialEq + Send;
    /// The part of the settings the TTS component is built from.
    type TtsKey: Clone + PartialEq + Send;

    /// The STT key of `settings`.
    fn stt_key(&self, settings: &Settings) -> Self::SttKey;
    /// The LLM key of `settings`.
    fn llm_key(&self, settings: &Settings) -> Self::LlmKey;
    /// The TTS key of `settings`.
    fn tts_key(&self, settings: &Settings) -> Self::TtsKey;
    /// Builds the STT component; the error names the setting at fault.
    fn build_stt(&self, settings: &Settings) -> Result<Self::Stt, SettingsError>;
    /// Builds the LLM component; the error names the setting at fault.
    fn build_llm(&self, settings: &Settings) -> Result<Self::Llm, SettingsError>;
    /// Builds the TTS component; the error names the setting at fault.
    fn build_tts(&self, settings: &Settings) -> Result<Self::Tts, SettingsError>;
    /// Whether the current LLM component should be rebuilt on a reconfiguration even
    /// though its settings did not change (the bot's factory: it is in echo mode, so a
    /// server that became reachable is picked up). Default: no.
    fn llm_needs_refresh(&self, _current: &Self::Llm) -> bool {
        false
    }
}

/// What one call uses: the components current when it started, kept until it ends.
pub struct CallComponents<F: ComponentFactory> {
    /// Speech to text.
    pub stt: Arc<F::Stt>,
    /// Language model.
    pub llm: Arc<F::Llm>,
    /// Speech synthesis.
    pub tts: Arc<F::Tts>,
    /// Generations of (stt, llm, tts), for logs and tests.
    pub generations: (u64, u64, u64),
}

impl<F: ComponentFactory> Clone for CallComponents<F> {
    fn clone(&self) -> Self {
        Self {
            stt: Arc::clone(&self.stt),
            llm: Arc::clone(&self.llm),
            tts: Arc::clone(&self.tts),
            generations: self.generations,
        }
    }
}

/// What [`Components::reconfigure`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconfigureReport {
    /// Components rebuilt and swapped in (`"stt"`, `"llm"`, `"tts"`).
    pub replaced: Vec<&'static str>,
    /// Components whose settings did not change.
    pub kept: Vec<&'static str>,
    /// Retired components shut down at once (no call held them).
    pub shut_down: Vec<ComponentReport>,
    /// How long building and swapping took.
    pub elapsed: Duration,
    /// What happened to the SIP registration (filled in by [`crate::Bot::reconfigure`]).
    pub registration: RegistrationChange,
}

/// What a reconfiguration did to the SIP registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RegistrationChange {
    /// The registration settings did not change.
    #[default]
    Unchanged,
    /// A registration was added: the registrar accepted it before the swap.
    Added {
        /// Expiry the registrar granted (seconds).
        expires: u32,
        /// From the first REGISTER to the registrar's 200.
        took: Duration,
    },
    /// The new binding was registered, swapped in, and the old one is being removed
    /// (`Expires: 0`, unless it was the same binding: same registrar, user and domain).
    Replaced {
        /// Expiry the registrar granted (seconds).
        expires: u32,
        /// From the first REGISTER to the registrar's 200.
        took: Duration,
    },
    /// The registration was removed (`Expires: 0` sent).
    Removed,
}

/// What [`Components::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentsShutdownReport {
    /// True when this call found the components already shut down.
    pub already_shut_down: bool,
    /// One report per component generation shut down (or released at the deadline).
    pub components: Vec<ComponentReport>,
    /// How long it took.
    pub elapsed: Duration,
}

impl ComponentsShutdownReport {
    /// Whether every component stopped cleanly within the deadline.
    pub fn all_clean(&self) -> bool {
        self.components.iter().all(|c| c.clean)
    }
}

/// Which components a reconfiguration rebuilds, made by [`Components::plan`]; build
/// them with [`RebuildPlan::build`] (without holding the lock around `Components`).
pub struct RebuildPlan<F: ComponentFactory> {
    factory: Arc<F>,
    settings: Settings,
    keys: (F::SttKey, F::LlmKey, F::TtsKey),
    rebuild: (bool, bool, bool),
    /// Generations the plan was made against.
    based_on: (u64, u64, u64),
}

impl<F: ComponentFactory> RebuildPlan<F> {
    /// Names of the components to rebuild (`"stt"`, `"llm"`, `"tts"`).
    pub fn rebuilds(&self) -> Vec<&'static str> {
        let (s, l, t) = self.rebuild;
        [(s, "stt"), (l, "llm"), (t, "tts")]
            .into_iter()
            .filter_map(|(r, n)| r.then_some(n))
            .collect()
    }

    /// Builds the planned components. Slow (a model load, a server probe): call it
    /// without holding the lock around [`Components`]. If one fails, those already
    /// built are shut down and the error names the failing setting.
    pub fn build(self) -> Result<BuiltComponents<F>, SettingsError> {
        let started = Instant::now();
        let f = &self.factory;
        let (rs, rl, rt) = self.rebuild;
        let mut built = BuiltComponents {
            stt: None,
            llm: None,
            tts: None,
            keys: None,
            based_on: self.based_on,
            build_time: Duration::ZERO,
        };
        // On an early return `built` is dropped: its Drop shuts down what was built.
        if rs {
            built.stt = Some(f.build_stt(&self.settings)?);
        }
        if rl {
            built.llm = Some(f.build_llm(&self.settings)?);
        }
        if rt {
            built.tts = Some(f.build_tts(&self.settings)?);
        }
        built.keys = Some(self.keys);
        built.build_time = started.elapsed();
        Ok(built)
    }
}

/// Components built by [`RebuildPlan::build`], waiting for [`Components::install`].
/// Dropped instead, it shuts them down (the half-built cleanup of a failed
/// reconfiguration).
pub struct BuiltComponents<F: ComponentFactory> {
    stt: Option<F::Stt>,
    llm: Option<F::Llm>,
    tts: Option<F::Tts>,
    keys: Option<(F::SttKey, F::LlmKey, F::TtsKey)>,
    based_on: (u64, u64, u64),
    build_time: Duration,
}

impl<F: ComponentFactory> BuiltComponents<F> {
    /// The LLM component built, if the plan rebuilt it.
    pub fn llm(&self) -> Option<&F::Llm> {
        self.llm.as_ref()
    }

    /// How long building took.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }
}

impl<F: ComponentFactory> Drop for BuiltComponents<F> {
    fn drop(&mut self) {
        let deadline = Instant::now() + HALF_BUILT_SHUTDOWN;
        if let Some(s) = self.stt.take() {
            cleanup_half_built("stt", s, deadline);
        }
        if let Some(l) = self.llm.take() {
            cleanup_half_built("llm", l, deadline);
        }
        if let Some(t) = self.tts.take() {
            cleanup_half_built("tts", t, deadline);
        }
    }
}

/// The bot's STT, LLM and TTS components (see the [module docs](self)).
pub struct Components<F: ComponentFactory> {
    factory: Arc<F>,
    stt: Slot<F::Stt, F::SttKey>,
    llm: Slot<F::Llm, F::LlmKey>,
    tts: Slot<F::Tts, F::TtsKey>,
    shut_down: bool,
}

/// How long a half-built component may take to shut down after a failed build.
const HALF_BUILT_SHUTDOWN: Duration = Duration::from_secs(2);

impl<F: ComponentFactory> Components<F> {
    /// Builds every component. If one fails, those already built are shut down and the
    /// error names the failing setting.
    pub fn start(factory: F, settings: &Settings) -> Result<Self, SettingsError> {
        let factory = Arc::new(factory);
        let deadline = || Instant::now() + HALF_BUILT_SHUTDOWN;
        let stt = factory.build_stt(settings)?;
        let llm = match factory.build_llm(settings) {
            Ok(l) => l,
            Err(e) => {
                cleanup_half_built("stt", stt, deadline());
                return Err(e);
            }
        };
        let tts = match factory.build_tts(settings) {
            Ok(t) => t,
            Err(e) => {
                cleanup_half_built("stt", stt, deadline());
                cleanup_half_built("llm", llm, deadline());
                return Err(e);
            }
        };
        Ok(Self {
            stt: Slot::new("stt", stt, factory.stt_key(settings)),
            llm: Slot::new("llm", llm, factory.llm_key(settings)),
            tts: Slot::new("tts", tts, factory.tts_key(settings)),
            factory,
            shut_down: false,
        })
    }

    /// The components a new call uses; `None` after shutdown.
    pub fn for_call(&self) -> Option<CallComponents<F>> {
        Some(CallComponents {
            stt: self.stt.current()?,
            llm: self.llm.current()?,
            tts: self.tts.current()?,
            generations: (
                self.stt.generation(),
                self.llm.generation(),
                self.tts.generation(),
            ),
        })
    }

    /// Step 1 of a reconfiguration: which components `settings` needs rebuilt (cheap;
    /// see the [module docs](self)). Fails once the components are shut down.
    pub fn plan(&self, settings: &Settings) -> Result<RebuildPlan<F>, SettingsError> {
        if self.shut_down {
            return Err(SettingsError::new("bot", "the components are shut down"));
        }
        let f = &self.factory;
        let keys = (f.stt_key(settings), f.llm_key(settings), f.tts_key(settings));
        let refresh_llm = self
            .llm
            .current
            .as_deref()
            .is_some_and(|l| f.llm_needs_refresh(l));
        let rebuild = (
            self.stt.needs_rebuild(&keys.0),
            self.llm.needs_rebuild(&keys.1) || refresh_llm,
            self.tts.needs_rebuild(&keys.2),
        );
        Ok(RebuildPlan {
            factory: Arc::clone(&self.factory),
            settings: settings.clone(),
            keys,
            rebuild,
            based_on: self.generations(),
        })
    }

    /// Step 3 of a reconfiguration: installs what [`RebuildPlan::build`] built, all at
    /// once; the replaced components retire (shut down at once when no call holds them).
    /// Refused (and `built` shut down) when the components were shut down or another
    /// reconfiguration was installed since the plan was made.
    pub fn install(&mut self, mut built: BuiltComponents<F>) -> Result<ReconfigureReport, SettingsError> {
        if self.shut_down {
            return Err(SettingsError::new("bot", "the components are shut down"));
        }
        if built.based_on != self.generations() {
            return Err(SettingsError::new(
                "bot",
                "another reconfiguration was installed meanwhile; nothing changed",
            ));
        }
        let Some((sk, lk, tk)) = built.keys.take() else {
            return Err(SettingsError::new("bot", "the components were not built"));
        };
        let started = Instant::now();
        let mut report = ReconfigureReport::default();
        let mut note = |name, replaced: bool| {
            if replaced {
                report.replaced.push(name);
            } else {
                report.kept.push(name);
            }
        };
        note("stt", built.stt.is_some());
        note("llm", built.llm.is_some());
        note("tts", built.tts.is_some());
        if let Some(s) = built.stt.take() {
            self.stt.install(s, sk);
        }
        if let Some(l) = built.llm.take() {
            self.llm.install(l, lk);
        }
        if let Some(t) = built.tts.take() {
            self.tts.install(t, tk);
        }
        report.shut_down = self.reap(Instant::now() + HALF_BUILT_SHUTDOWN);
        report.elapsed = built.build_time + started.elapsed();
        tracing::info!(replaced = ?report.replaced, kept = ?report.kept, elapsed_ms = report.elapsed.as_millis() as u64, "components reconfigured");
        Ok(report)
    }

    /// Plans, builds and installs in one go, holding `&mut self` throughout (see the
    /// [module docs](self)); on any failure nothing changes.
    pub fn reconfigure(&mut self, settings: &Settings) -> Result<ReconfigureReport, SettingsError> {
        let built = self.plan(settings)?.build()?;
        self.install(built)
    }

    /// Shuts down retired components that no call holds any more.
    pub fn reap(&mut self, deadline: Instant) -> Vec<ComponentReport> {
        let mut r = self.stt.reap(deadline);
        r.extend(self.llm.reap(deadline));
        r.extend(self.tts.reap(deadline));
        r
    }

    /// Retired components still held by live calls, per (stt, llm, tts).
    pub fn retiring(&self) -> (usize, usize, usize) {
        (self.stt.retiring(), self.llm.retiring(), self.tts.retiring())
    }

    /// Generations of the current (stt, llm, tts).
    pub fn generations(&self) -> (u64, u64, u64) {
        (
            self.stt.generation(),
            self.llm.generation(),
            self.tts.generation(),
        )
    }

    /// Shuts every component down (current and retired), bounded by `deadline`;
    /// idempotent. Logs "All components cleaned up" when all stopped cleanly.
    pub fn shutdown(&mut self, deadline: Instant) -> ComponentsShutdownReport {
        let started = Instant::now();
        if self.shut_down {
            return ComponentsShutdownReport {
                already_shut_down: true,
                ..ComponentsShutdownReport::default()
            };
        }
        self.shut_down = true;
        // The LLM first (it is the quickest to stop), the TTS and STT engines after.
        let mut components = self.llm.shutdown(deadline);
        components.extend(self.tts.shutdown(deadline));
        components.extend(self.stt.shutdown(deadline));
        let report = ComponentsShutdownReport {
            already_shut_down: false,
            components,
            elapsed: started.elapsed(),
        };
        if report.all_clean() {
            tracing::info!(
                elapsed_ms = report.elapsed.as_millis() as u64,
                "All components cleaned up"
            );
        } else {
            tracing::warn!(report = ?report, "components shut down with problems");
        }
        report
    }
}

impl<F: ComponentFactory> Drop for Components<F> {
    fn drop(&mut self) {
        self.shutdown(Instant::now() + Duration::from_secs(2));
    }
}

fn cleanup_half_built<T: Managed>(name: &'static str, mut component: T, deadline: Instant) {
    let r = shut(name, 0, &mut component, deadline);
    tracing::info!(
        component = name,
        clean = r.clean,
        "half-built component cleaned up"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts live fakes and shutdowns, so tests see leaks and double shutdowns.
    #[derive(Default)]
    struct Ledger {
        built: AtomicUsize,
        shut: AtomicUsize,
        events: Mutex<Vec<String>>,
    }

    struct Fake {
        label: String,
        ledger: Arc<Ledger>,
        shut: bool,
    }

    impl Managed for Fake {
        fn shutdown(&mut self, _deadline: Instant) -> ComponentReport {
            if !self.shut {
                self.shut = true;
                self.ledger.shut.fetch_add(1, Ordering::SeqCst);
                self.ledger
                    .events
                    .lock()
                    .unwrap()
                    .push(format!("shutdown {}", self.label));
            }
            ComponentReport {
                component: "",
                generation: 0,
                clean: true,
                detail: self.label.clone(),
                elapsed: Duration::ZERO,
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            assert!(self.shut, "{} dropped without shutdown", self.label);
        }
    }

    /// Builds fakes labelled from the settings; fails for a chosen model name; an LLM
    /// model named `slow` waits for `gate` (a slow model load); `refresh` is what
    /// `llm_needs_refresh` says.
    struct Factory {
        ledger: Arc<Ledger>,
        gate: Option<crossbeam_channel::Receiver<()>>,
        refresh: bool,
    }

    impl Factory {
        fn make(&self, label: String) -> Fake {
            self.ledger.built.fetch_add(1, Ordering::SeqCst);
            self.ledger.events.lock().unwrap().push(format!("build {label}"));
            Fake {
                label,
                ledger: Arc::clone(&self.ledger),
                shut: false,
            }
        }
    }

    impl ComponentFactory for Factory {
        type Stt = Fake;
        type Llm = Fake;
        type Tts = Fake;
        type SttKey = std::path::PathBuf;
        type LlmKey = String;
        type TtsKey = String;

        fn stt_key(&self, s: &Settings) -> std::path::PathBuf {
            s.stt.model.clone()
        }
        fn llm_key(&self, s: &Settings) -> String {
            s.llm.model.clone()
        }
        fn tts_key(&self, s: &Settings) -> String {
            s.tts.voice.clone()
        }
        fn build_stt(&self, s: &Settings) -> Result<Fake, SettingsError> {
            if s.stt.model.to_string_lossy().contains("missing") {
                return Err(SettingsError::new("stt.model", "no such file"));
            }
            Ok(self.make(format!("stt:{}", s.stt.model.display())))
        }
        fn build_llm(&self, s: &Settings) -> Result<Fake, SettingsError> {
            if s.llm.model == "slow"
                && let Some(gate) = &self.gate
            {
                gate.recv_timeout(Duration::from_secs(10)).unwrap();
            }
            if s.llm.model == "bad" {
                return Err(SettingsError::new("llm.model", "unknown model"));
            }
            Ok(self.make(format!("llm:{}", s.llm.model)))
        }
        fn build_tts(&self, s: &Settings) -> Result<Fake, SettingsError> {
            if s.tts.voice == "xx" {
                return Err(SettingsError::new("tts.voice", "no such voice"));
            }
            Ok(self.make(format!("tts:{}", s.tts.voice)))
        }
        fn llm_needs_refresh(&self, _current: &Fake) -> bool {
            self.refresh
        }
    }

    fn factory(ledger: &Arc<Ledger>) -> Factory {
        Factory {
            ledger: Arc::clone(ledger),
            gate: None,
            refresh: false,
        }
    }

    fn setup() -> (Components<Factory>, Arc<Ledger>, Settings) {
        let ledger = Arc::new(Ledger::default());
        let settings = Settings::default();
        let c = Components::start(factory(&ledger), &settings).unwrap();
        (c, ledger, settings)
    }

    fn live(ledger: &Ledger) -> usize {
        ledger.built.load(Ordering::SeqCst) - ledger.shut.load(Ordering::SeqCst)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    #[test]
    fn start_failure_cleans_up_what_was_built_and_names_the_setting() {
        for (edit, field, built) in [
            (
                Box::new(|s: &mut Settings| s.tts.voice = "xx".into()) as Box<dyn Fn(&mut Settings)>,
                "tts.voice",
                2,
            ),
            (
                Box::new(|s: &mut Settings| s.llm.model = "bad".into()),
                "llm.model",
                1,
            ),
            (
                Box::new(|s: &mut Settings| s.stt.model = "missing.bin".into()),
                "stt.model",
                0,
            ),
        ] {
            let ledger = Arc::new(Ledger::default());
            let mut s = Settings::default();
            edit(&mut s);
            let e = Components::start(factory(&ledger), &s).err().unwrap();
            assert_eq!(e.field, field);
            assert_eq!(ledger.built.load(Ordering::SeqCst), built);
            assert_eq!(live(&ledger), 0, "half-built components shut down");
        }
    }

    #[test]
    fn reconfigure_rebuilds_only_what_changed_and_swaps() {
        let (mut c, ledger, mut s) = setup();
        assert_eq!(c.generations(), (1, 1, 1));
        let r = c.reconfigure(&s).unwrap();
        assert!(r.replaced.is_empty());
        assert_eq!(ledger.built.load(Ordering::SeqCst), 3);

        s.llm.model = "qwen".into();
        let r = c.reconfigure(&s).unwrap();
        assert_eq!(r.replaced, vec!["llm"]);
        assert_eq!(r.kept, vec!["stt", "tts"]);
        assert_eq!(
            r.shut_down.len(),
            1,
            "no call held the old LLM: shut down at once"
        );
        assert_eq!(r.shut_down[0].generation, 1);
        assert_eq!(c.generations(), (1, 2, 1));
        assert_eq!(live(&ledger), 3);
        let call = c.for_call().unwrap();
        assert_eq!(call.llm.label, "llm:qwen");
        drop(call);
        let events = ledger.events.lock().unwrap().clone();
        let build = events.iter().position(|e| e == "build llm:qwen").unwrap();
        let old_down = events
            .iter()
            .position(|e| e == "shutdown llm:llama3.2:1b")
            .unwrap();
        assert!(build < old_down, "new built before old shut down: {events:?}");
    }

    #[test]
    fn failed_reconfigure_changes_nothing_and_cleans_up_the_half_built() {
        let (mut c, ledger, mut s) = setup();
        let before = c.for_call().unwrap();
        s.stt.model = "other.bin".into();
        s.llm.model = "qwen".into();
        s.tts.voice = "xx".into();
        let e = c.reconfigure(&s).unwrap_err();
        assert_eq!(e.field, "tts.voice");
        assert_eq!(c.generations(), (1, 1, 1));
        assert_eq!(c.retiring(), (0, 0, 0));
        // stt and llm were built for the attempt and shut down again
        assert_eq!(ledger.built.load(Ordering::SeqCst), 5);
        assert_eq!(live(&ledger), 3);
        let after = c.for_call().unwrap();
        assert!(Arc::ptr_eq(&before.stt, &after.stt));
        assert!(Arc::ptr_eq(&before.llm, &after.llm));
        assert_eq!(
            after.tts.label,
            format!("tts:{}", crate::settings::TtsSettings::default().voice)
        );
        // a valid change afterwards still works
        s.tts.voice = "en-gb".into();
        let r = c.reconfigure(&s).unwrap();
        assert_eq!(r.replaced, vec!["stt", "llm", "tts"]);
    }

    #[test]
    fn live_calls_keep_their_components_until_they_end() {
        let (mut c, ledger, mut s) = setup();
        let call = c.for_call().unwrap();
        s.stt.model = "new.bin".into();
        let r = c.reconfigure(&s).unwrap();
        assert_eq!(r.replaced, vec!["stt"]);
        assert!(r.shut_down.is_empty(), "the live call still holds the old STT");
        assert_eq!(c.retiring(), (1, 0, 0));
        assert_eq!(call.stt.label, "stt:models/ggml-tiny.en.bin");
        assert!(!call.stt.shut, "still serving the live call");
        let new_call = c.for_call().unwrap();
        assert_eq!(new_call.stt.label, "stt:new.bin");
        assert_eq!(new_call.generations, (2, 1, 1));
        assert!(c.reap(soon()).is_empty());
        drop(call);
        let reaped = c.reap(soon());
        assert_eq!(reaped.len(), 1);
        assert_eq!((reaped[0].component, reaped[0].generation), ("stt", 1));
        assert_eq!(c.retiring(), (0, 0, 0));
        drop(new_call);
        assert_eq!(live(&ledger), 3);
    }

    #[test]
    fn shutdown_is_idempotent_and_stops_everything() {
        let (mut c, ledger, mut s) = setup();
        s.llm.model = "a".into();
        c.reconfigure(&s).unwrap();
        let r = c.shutdown(soon());
        assert!(!r.already_shut_down);
        assert!(r.all_clean());
        assert_eq!(r.components.len(), 3);
        assert_eq!(live(&ledger), 0);
        let again = c.shutdown(soon());
        assert!(again.already_shut_down);
        assert!(c.for_call().is_none());
        assert!(c.reconfigure(&s).is_err());
        assert_eq!(ledger.shut.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn shutdown_waits_for_a_call_to_let_go_within_the_deadline() {
        let (mut c, ledger, _s) = setup();
        let call = c.for_call().unwrap();
        let t = std::thread::Builder::new()
            .name("fake-call".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                drop(call);
            })
            .unwrap();
        let r = c.shutdown(Instant::now() + Duration::from_secs(5));
        t.join().unwrap();
        assert!(r.all_clean(), "{r:?}");
        assert_eq!(live(&ledger), 0);
    }

    #[test]
    fn shutdown_deadline_releases_components_still_held() {
        let (mut c, ledger, _s) = setup();
        let call = c.for_call().unwrap();
        let started = Instant::now();
        let r = c.shutdown(Instant::now() + Duration::from_millis(30));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!r.all_clean());
        assert_eq!(r.components.iter().filter(|c| !c.clean).count(), 3);
        assert!(r.components.iter().all(|c| c.detail.contains("1 live call")));
        // the holder's drop is the last owner: the fakes shut down in their Drop path
        let mut call = call;
        for f in [&mut call.stt, &mut call.llm, &mut call.tts] {
            Arc::get_mut(f).unwrap().shutdown(soon());
        }
        drop(call);
        assert_eq!(live(&ledger), 0);
    }

    /// The slow step runs without the lock: while a new LLM "loads" (blocked on a
    /// gate), new calls still take their components under the lock, from the old
    /// generation; once installed, new calls get the new one.
    #[test]
    fn a_slow_build_does_not_block_new_calls() {
        let ledger = Arc::new(Ledger::default());
        let (open, gate) = crossbeam_channel::bounded(1);
        let mut f = factory(&ledger);
        f.gate = Some(gate);
        let mut s = Settings::default();
        let c = Arc::new(Mutex::new(Components::start(f, &s).unwrap()));
        s.llm.model = "slow".into();
        let (c2, s2) = (Arc::clone(&c), s.clone());
        let (building_tx, building) = crossbeam_channel::bounded(1);
        let t = std::thread::Builder::new()
            .name("reconfigure".into())
            .spawn(move || {
                let plan = c2.lock().unwrap().plan(&s2).unwrap();
                building_tx.send(()).unwrap();
                let built = plan.build().unwrap();
                c2.lock().unwrap().install(built).unwrap()
            })
            .unwrap();
        building.recv_timeout(Duration::from_secs(5)).unwrap();
        // The build is blocked on the gate; take components for "new calls" meanwhile.
        for _ in 0..3 {
            let started = Instant::now();
            let call = c.lock().unwrap().for_call().unwrap();
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(call.llm.label, "llm:llama3.2:1b");
            assert_eq!(call.generations, (1, 1, 1));
        }
        assert!(!t.is_finished(), "the build is still in progress");
        open.send(()).unwrap();
        let r = t.join().unwrap();
        assert_eq!(r.replaced, vec!["llm"]);
        assert_eq!(c.lock().unwrap().for_call().unwrap().llm.label, "llm:slow");
        c.lock().unwrap().shutdown(soon());
        assert_eq!(live(&ledger), 0);
    }

    #[test]
    fn built_but_not_installed_components_are_shut_down_and_stale_plans_refused() {
        let (mut c, ledger, mut s) = setup();
        s.stt.model = "a.bin".into();
        s.llm.model = "a".into();
        let plan = c.plan(&s).unwrap();
        assert_eq!(plan.rebuilds(), vec!["stt", "llm"]);
        let built = plan.build().unwrap();
        assert_eq!(live(&ledger), 5);
        drop(built);
        assert_eq!(live(&ledger), 3, "dropped instead of installed: shut down");
        assert_eq!(c.generations(), (1, 1, 1));
        // A plan made before another install is refused; its components shut down.
        let stale = c.plan(&s).unwrap().build().unwrap();
        s.tts.voice = "en-gb".into();
        c.reconfigure(&s).unwrap();
        let e = c.install(stale).unwrap_err();
        assert_eq!(e.field, "bot");
        assert_eq!(c.generations(), (2, 2, 2));
        assert_eq!(live(&ledger), 3);
    }

    #[test]
    fn llm_refresh_rebuilds_an_unchanged_llm() {
        let ledger = Arc::new(Ledger::default());
        let mut f = factory(&ledger);
        f.refresh = true;
        let s = Settings::default();
        let mut c = Components::start(f, &s).unwrap();
        let r = c.reconfigure(&s).unwrap();
        assert_eq!(r.replaced, vec!["llm"]);
        assert_eq!(r.kept, vec!["stt", "tts"]);
        assert_eq!(c.generations(), (1, 2, 1));
        c.shutdown(soon());
        assert_eq!(live(&ledger), 0);
    }
}
