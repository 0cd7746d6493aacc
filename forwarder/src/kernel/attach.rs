//! Attaching to interfaces: XDP plus the TC (tcx ingress) fallback.
//!
//! With pins, each link is pinned; a later daemon finds the pin and swaps
//! its own program in with `bpf_link_update`, an atomic replacement: no
//! packet sees an interface without a program.

use std::path::PathBuf;

use aya::programs::{
    ProgramError, TcAttachType, XdpMode,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use tracing::{info, warn};

use super::{Kernel, KernelError, ifindex};

/// How XDP is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// The driver's XDP hook; falls back to generic (skb) XDP, with a
    /// warning, where the driver has none.
    Native,
    /// Generic XDP, for any interface (slower).
    Skb,
}

/// A pinned link this daemon holds: dropping the fd leaves it attached
/// (the pin keeps it); removing the pin too detaches it.
pub(super) struct Held {
    link: FdLink,
    pin: PathBuf,
    /// Taken over from an earlier daemon's pin (else made by this one).
    adopted: bool,
}

impl Held {
    fn release(self, detach: bool) {
        let Self { link, pin, adopted: _ } = self;
        if detach && let Err(err) = std::fs::remove_file(&pin) {
            warn!(pin = %pin.display(), "removing link pin: {err}");
        }
        drop(link);
    }
}

/// What is attached to one interface.
pub(super) struct Attached {
    iface: String,
    /// Empty without pins: the links then live in the programs and go with them.
    held: Vec<Held>,
}

/// How an interface came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    Fresh(AttachMode),
    /// Pinned links of an earlier daemon, now running this program.
    Adopted,
}

impl Kernel {
    /// Attaches XDP and the TC fallback to `iface`, adopting pinned links of
    /// an earlier daemon when there are any, and lists it as a redirect target.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attachment, KernelError> {
        let index = ifindex(iface)?;
        let attach_err = |source: ProgramError| KernelError::Attach { iface: iface.to_owned(), source };
        let mut held = Vec::new();
        let xdp_pin = self.pins.as_ref().map(|pins| pins.link("xdp", iface));
        let attachment = match &xdp_pin {
            Some(pin) if pin.exists() => {
                let link = XdpLink::try_from(adopt(pin)?).map_err(|e| pin_err("xdp", iface, e))?;
                let id = self.xdp().attach_to_link(link).map_err(attach_err)?;
                let link = self.xdp().take_link(id).map_err(attach_err)?;
                held.push(Held {
                    link: FdLink::try_from(link).map_err(|e| pin_err("xdp", iface, e))?,
                    pin: pin.clone(),
                    adopted: true,
                });
                Attachment::Adopted
            }
            _ => {
                let (id, got) = match mode {
                    AttachMode::Skb => {
                        (self.xdp().attach_to_if_index(index, XdpMode::Skb).map_err(attach_err)?, mode)
                    }
                    AttachMode::Native => match self.xdp().attach_to_if_index(index, XdpMode::Driver) {
                        Ok(id) => (id, AttachMode::Native),
                        Err(err) => {
                            warn!(%iface, "native XDP unavailable ({err}); falling back to generic XDP");
                            (
                                self.xdp().attach_to_if_index(index, XdpMode::Skb).map_err(attach_err)?,
                                AttachMode::Skb,
                            )
                        }
                    },
                };
                if let Some(pin) = &xdp_pin {
                    let link = self.xdp().take_link(id).map_err(attach_err)?;
                    let link = FdLink::try_from(link).map_err(|e| pin_err("xdp", iface, e))?;
                    held.push(pin_link(link, pin, "xdp", iface)?);
                }
                Attachment::Fresh(got)
            }
        };

        // Held links go on the list even when the rest fails, so that
        // `abort` finds (and detaches) the ones this start made.
        let rest = self.attach_tc(iface, index, &mut held);
        self.links.push(Attached { iface: iface.to_owned(), held });
        rest?;
        info!(%iface, ifindex = index, ?attachment, "attached");
        Ok(attachment)
    }

    /// The TC program on `iface` (adopting its pinned link if any), and the
    /// interface as a redirect target.
    fn attach_tc(&mut self, iface: &str, index: u32, held: &mut Vec<Held>) -> Result<(), KernelError> {
        let attach_err = |source: ProgramError| KernelError::Attach { iface: iface.to_owned(), source };
        let tc_pin = self.pins.as_ref().map(|pins| pins.link("tc", iface));
        match &tc_pin {
            Some(pin) if pin.exists() => {
                let link = SchedClassifierLink::try_from(adopt(pin)?).map_err(|e| pin_err("tc", iface, e))?;
                let id = self.tc().attach_to_link(link).map_err(attach_err)?;
                let link = self.tc().take_link(id).map_err(attach_err)?;
                held.push(Held {
                    link: FdLink::try_from(link).map_err(|e| pin_err("tc", iface, e))?,
                    pin: pin.clone(),
                    adopted: true,
                });
            }
            _ => {
                let id = self.tc().attach(iface, TcAttachType::Ingress).map_err(attach_err)?;
                if let Some(pin) = &tc_pin {
                    let link = self.tc().take_link(id).map_err(attach_err)?;
                    match FdLink::try_from(link) {
                        Ok(link) => held.push(pin_link(link, pin, "tc", iface)?),
                        // Netlink-attached TC (kernels before 6.6) cannot be
                        // pinned; a restarted daemon attaches it again.
                        Err(err) => warn!(%iface, "TC fallback link not pinnable: {err}"),
                    }
                }
            }
        }
        self.maps.egress.insert(index, index, None, 0).map_err(|err| KernelError::Egress(err.to_string()))?;
        Ok(())
    }

    /// Detaches pinned links of interfaces this daemon no longer serves
    /// (left by an earlier daemon with other `--iface`s).
    pub fn detach_others(&mut self) -> Result<(), KernelError> {
        let Some(pins) = &self.pins else { return Ok(()) };
        for kind in ["xdp", "tc"] {
            for iface in pins.linked_interfaces(kind)? {
                if !self.links.iter().any(|a| a.iface == iface) {
                    let pin = pins.link(kind, &iface);
                    std::fs::remove_file(&pin).map_err(|e| pin_err(kind, &iface, e))?;
                    info!(%iface, kind, "detached a link left by an earlier daemon");
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

fn pin_link(link: FdLink, pin: &PathBuf, kind: &'static str, iface: &str) -> Result<Held, KernelError> {
    let pinned = link.pin(pin).map_err(|e| pin_err(kind, iface, e))?;
    Ok(Held { link: FdLink::from(pinned), pin: pin.clone(), adopted: false })
}

fn pin_err(kind: &'static str, iface: &str, err: impl std::fmt::Display) -> KernelError {
    KernelError::PinLink { kind, iface: iface.to_owned(), message: err.to_string() }
}
