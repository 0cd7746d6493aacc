//! Attaching to interfaces: XDP with the TC (tcx ingress) program beside
//! it, or the TC program that runs the whole datapath instead of XDP.
//!
//! With pins, each link is pinned; a later daemon finds the pin and swaps
//! its own program in with `bpf_link_update`, an atomic replacement: no
//! packet sees an interface without a program.

use std::path::PathBuf;

use aya::programs::{
    ProgramError, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use tracing::{info, warn};

use super::{Kernel, KernelError, ifindex};

/// How XDP is attached (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// The driver's XDP hook; falls back to generic (skb) XDP, with a
    /// warning, where the driver has none.
    Native,
    /// Generic XDP, for any interface (slower).
    Skb,
}

/// Which hook runs the datapath (`--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachChoice {
    /// XDP where the interface has a driver with native XDP; TC on virtual
    /// interfaces (veth, tap, bridges, bonds) and where native XDP fails.
    Auto,
    /// XDP (see `--xdp-mode`), whatever the interface.
    Xdp,
    /// TC (tcx ingress), whatever the interface.
    Tc,
}

/// What to attach to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Xdp(XdpMode),
    /// Native XDP, else (no driver support) TC.
    XdpElseTc,
    Tc,
}

/// What runs the datapath on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Xdp(XdpMode),
    Tc,
}

/// How an interface came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub hook: Hook,
    /// Pinned links of an earlier daemon now run this program.
    pub adopted: bool,
}

/// The two kinds of link, as pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Xdp,
    Tc,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Xdp, Kind::Tc];

    fn pin_name(self) -> &'static str {
        match self {
            Kind::Xdp => "xdp",
            Kind::Tc => "tc",
        }
    }
}

/// Which TC program a TC link runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcRole {
    /// Beside XDP: what XDP hands over.
    HandedOver,
    /// Instead of XDP: every packet.
    All,
}

/// A pinned link this daemon holds: dropping the fd leaves it attached
/// (the pin keeps it); removing the pin too detaches it.
pub(super) struct Held {
    link: FdLink,
    pin: PathBuf,
    kind: Kind,
    /// Taken over from an earlier daemon's pin (else made by this one).
    adopted: bool,
}

impl Held {
    fn release(self, detach: bool) {
        let Self { link, pin, kind: _, adopted: _ } = self;
        if detach && let Err(err) = std::fs::remove_file(&pin) {
            warn!(pin = %pin.display(), "removing link pin: {err}");
        }
        drop(link);
    }
}

/// What is attached to one interface.
pub(super) struct Attached {
    iface: String,
    hook: Hook,
    /// Empty without pins: the links then live in the programs and go with them.
    held: Vec<Held>,
}

impl Kernel {
    /// Attaches the datapath to `iface` as `plan` says, adopting pinned
    /// links of an earlier daemon when there are any, and lists it as a
    /// redirect target.
    ///
    /// An adopted TC link runs the whole datapath until [`Kernel::finish`]
    /// (even beside XDP, where it then re-checks only what XDP passed), so
    /// that a start that fails leaves a complete datapath whatever the
    /// predecessor ran.
    pub fn attach(&mut self, iface: &str, plan: Plan) -> Result<Attachment, KernelError> {
        let index = ifindex(iface)?;
        let mut held = Vec::new();
        // Held links go on the list even when the rest fails, so that
        // `abort` finds (and detaches) the ones this start made.
        let result = self.attach_hooks(iface, index, plan, &mut held);
        let hook = result.as_ref().map_or(Hook::Tc, |a| a.hook);
        self.links.push(Attached { iface: iface.to_owned(), hook, held });
        let attachment = result?;
        info!(%iface, ifindex = index, ?attachment, "attached");
        Ok(attachment)
    }

    fn attach_hooks(
        &mut self,
        iface: &str,
        index: u32,
        plan: Plan,
        held: &mut Vec<Held>,
    ) -> Result<Attachment, KernelError> {
        let xdp = match plan {
            Plan::Xdp(mode) => self.attach_xdp(iface, index, mode, false, held).transpose()?,
            Plan::XdpElseTc => self.attach_xdp(iface, index, XdpMode::Native, true, held).transpose()?,
            Plan::Tc => None,
        };
        let role = if xdp.is_some() { TcRole::HandedOver } else { TcRole::All };
        let tc_adopted = self.attach_tc(iface, index, role, held)?;
        Ok(match xdp {
            Some((mode, adopted)) => Attachment { hook: Hook::Xdp(mode), adopted },
            None => Attachment { hook: Hook::Tc, adopted: tc_adopted },
        })
    }

    /// XDP on `iface`, adopting its pinned link if any: the mode it runs in
    /// and whether it was adopted; with `else_tc`, `None` where the driver
    /// has no native XDP.
    fn attach_xdp(
        &mut self,
        iface: &str,
        index: u32,
        mode: XdpMode,
        else_tc: bool,
        held: &mut Vec<Held>,
    ) -> Option<Result<(XdpMode, bool), KernelError>> {
        let attach_err = |source: ProgramError| KernelError::Attach { iface: iface.to_owned(), source };
        let pin = self.pins.as_ref().map(|pins| pins.link(Kind::Xdp.pin_name(), iface));
        if let Some(pin) = &pin
            && pin.exists()
        {
            return Some((|| {
                let link = XdpLink::try_from(adopt(pin)?).map_err(|e| pin_err("xdp", iface, e))?;
                let id = self.xdp().attach_to_link(link).map_err(attach_err)?;
                let link = self.xdp().take_link(id).map_err(attach_err)?;
                let link = FdLink::try_from(link).map_err(|e| pin_err("xdp", iface, e))?;
                held.push(Held { link, pin: pin.clone(), kind: Kind::Xdp, adopted: true });
                // The mode it was attached in is the predecessor's; native
                // is what it asked for unless told otherwise.
                Ok((mode, true))
            })());
        }
        let aya_mode = |mode| match mode {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Skb => aya::programs::XdpMode::Skb,
        };
        let attached = match self.xdp().attach_to_if_index(index, aya_mode(mode)) {
            Ok(id) => Ok((id, mode)),
            Err(err) if mode == XdpMode::Native && else_tc => {
                info!(%iface, "native XDP unavailable ({err}): the datapath runs in TC");
                return None;
            }
            Err(err) if mode == XdpMode::Native => {
                warn!(%iface, "native XDP unavailable ({err}); falling back to generic XDP");
                self.xdp().attach_to_if_index(index, aya_mode(XdpMode::Skb)).map(|id| (id, XdpMode::Skb))
            }
            Err(err) => Err(err),
        };
        Some((|| {
            let (id, got) = attached.map_err(attach_err)?;
            if let Some(pin) = &pin {
                let link = self.xdp().take_link(id).map_err(attach_err)?;
                let link = FdLink::try_from(link).map_err(|e| pin_err("xdp", iface, e))?;
                held.push(pin_link(link, pin, Kind::Xdp, iface)?);
            }
            Ok((got, false))
        })())
    }

    /// The TC program for `role` on `iface` (adopting its pinned link if
    /// any, then running the whole datapath: see [`Kernel::attach`]), and
    /// the interface as a redirect target. Whether the link was adopted.
    fn attach_tc(
        &mut self,
        iface: &str,
        index: u32,
        role: TcRole,
        held: &mut Vec<Held>,
    ) -> Result<bool, KernelError> {
        let attach_err = |source: ProgramError| KernelError::Attach { iface: iface.to_owned(), source };
        let tc_pin = self.pins.as_ref().map(|pins| pins.link(Kind::Tc.pin_name(), iface));
        let adopted = match &tc_pin {
            Some(pin) if pin.exists() => {
                let link = SchedClassifierLink::try_from(adopt(pin)?).map_err(|e| pin_err("tc", iface, e))?;
                let id = self.tc_all().attach_to_link(link).map_err(attach_err)?;
                let link = self.tc_all().take_link(id).map_err(attach_err)?;
                held.push(Held {
                    link: FdLink::try_from(link).map_err(|e| pin_err("tc", iface, e))?,
                    pin: pin.clone(),
                    kind: Kind::Tc,
                    adopted: true,
                });
                true
            }
            _ => {
                let program = match role {
                    TcRole::HandedOver => self.tc(),
                    TcRole::All => self.tc_all(),
                };
                let id = program.attach(iface, TcAttachType::Ingress).map_err(attach_err)?;
                if let Some(pin) = &tc_pin {
                    let link = program.take_link(id).map_err(attach_err)?;
                    match FdLink::try_from(link) {
                        Ok(link) => held.push(pin_link(link, pin, Kind::Tc, iface)?),
                        // Netlink-attached TC (kernels before 6.6) cannot be
                        // pinned; a restarted daemon attaches it again.
                        Err(err) => warn!(%iface, "TC link not pinnable: {err}"),
                    }
                }
                false
            }
        };
        self.maps.egress.insert(index, index, None, 0).map_err(|err| KernelError::Egress(err.to_string()))?;
        Ok(adopted)
    }

    /// Completes a start: adopted TC links beside XDP go back to what XDP
    /// hands over, and pinned links this daemon does not use are detached
    /// (interfaces it no longer serves, XDP where TC now runs everything).
    pub fn finish(&mut self) -> Result<(), KernelError> {
        for i in 0..self.links.len() {
            let Attached { iface, hook, held } = &self.links[i];
            let adopted_tc = held.iter().find(|h| h.kind == Kind::Tc && h.adopted).map(|h| h.pin.clone());
            let (iface, hook) = (iface.clone(), *hook);
            if let (Hook::Xdp(_), Some(pin)) = (hook, adopted_tc) {
                let attach_err = |source: ProgramError| KernelError::Attach { iface: iface.clone(), source };
                let link =
                    SchedClassifierLink::try_from(adopt(&pin)?).map_err(|e| pin_err("tc", &iface, e))?;
                let id = self.tc().attach_to_link(link).map_err(attach_err)?;
                // The pin holds the link; this second handle can go.
                drop(self.tc().take_link(id).map_err(attach_err)?);
            }
        }
        self.detach_others()
    }

    /// Detaches pinned links this daemon does not hold (left by an earlier
    /// daemon with other `--iface`s or another hook).
    fn detach_others(&mut self) -> Result<(), KernelError> {
        let Some(pins) = &self.pins else { return Ok(()) };
        for kind in Kind::ALL {
            let name = kind.pin_name();
            for iface in pins.linked_interfaces(name)? {
                let held =
                    self.links.iter().any(|a| a.iface == iface && a.held.iter().any(|h| h.kind == kind));
                // Unpinnable (netlink) TC links are not held but attached.
                let unpinned_tc = kind == Kind::Tc && self.links.iter().any(|a| a.iface == iface);
                if !held && !unpinned_tc {
                    let pin = pins.link(name, &iface);
                    std::fs::remove_file(&pin).map_err(|e| pin_err(name, &iface, e))?;
                    info!(%iface, kind = name, "detached a link left by an earlier daemon");
                }
            }
        }
        Ok(())
    }

    /// Detaches from every interface (the pinned maps stay, for a later
    /// daemon to adopt).
    pub fn detach_all(&mut self) {
        for attached in self.links.drain(..) {
            for held in attached.held {
                held.release(true);
            }
        }
    }

    /// Undoes a start that failed: detaches the links this daemon made and
    /// leaves the ones it adopted, so a predecessor's datapath (now running
    /// this program, on the same maps) keeps forwarding.
    pub fn abort(mut self) {
        for attached in self.links.drain(..) {
            for held in attached.held {
                let fresh = !held.adopted;
                held.release(fresh);
            }
        }
    }

    /// Exits leaving the datapath attached and pinned, for the next daemon
    /// to adopt: forwarding goes on meanwhile.
    pub fn hand_over(mut self) {
        for attached in self.links.drain(..) {
            for held in attached.held {
                held.release(false);
            }
        }
    }
}

fn adopt(pin: &PathBuf) -> Result<FdLink, KernelError> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| KernelError::PinLink {
        kind: "pinned",
        iface: pin.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(FdLink::from(pinned))
}

fn pin_link(link: FdLink, pin: &PathBuf, kind: Kind, iface: &str) -> Result<Held, KernelError> {
    let pinned = link.pin(pin).map_err(|e| pin_err(kind.pin_name(), iface, e))?;
    Ok(Held { link: FdLink::from(pinned), pin: pin.clone(), kind, adopted: false })
}

fn pin_err(kind: &'static str, iface: &str, err: impl std::fmt::Display) -> KernelError {
    KernelError::PinLink { kind, iface: iface.to_owned(), message: err.to_string() }
}
