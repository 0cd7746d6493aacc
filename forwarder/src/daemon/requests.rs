//! Answering control requests: each [`Request`] to its [`Response`].

use tokio::sync::oneshot;

use super::{Daemon, change::ChangeError, stats};
use crate::{
    config::{BackendSpec, DEFAULT_WEIGHT, Service, ServiceFile},
    conntrack::{self, flows::ServiceNames},
    control::{Request, Response},
    state::Summary,
};

impl Daemon {
    pub(super) async fn handle(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        let response = match request {
            Request::ServiceList => Response::Services(stats::services(&self.desired, &self.checks)),
            Request::Stats => {
                let sweep = self.sweep.borrow().clone();
                Response::Stats(stats::stats(
                    &self.desired,
                    &self.checks,
                    &self.table,
                    &self.kernel.maps,
                    &self.sampler,
                    &sweep,
                ))
            }
            Request::Flows { service } => {
                self.spawn_flows(service, reply);
                return;
            }
            Request::ServiceAdd { name, vip, port, protocol, mode, backends, persist } => {
                let service = Service {
                    name,
                    vip,
                    port,
                    protocol,
                    mode,
                    backends: backends
                        .into_iter()
                        .map(|addr| BackendSpec { addr, weight: DEFAULT_WEIGHT })
                        .collect(),
                    health: None,
                    source_ranges: Vec::new(),
                };
                changed(self.change(persist, |e| e.add_service(&service)).await)
            }
            Request::ServiceRemove { name, persist } => {
                changed(self.change(persist, |e| e.remove_service(&name)).await)
            }
            Request::BackendAdd { service, addr, weight, persist } => changed(
                self.change(persist, |e| e.add_backend(&service, &BackendSpec { addr, weight })).await,
            ),
            Request::BackendRemove { service, addr, persist } => {
                changed(self.change(persist, |e| e.remove_backend(&service, addr)).await)
            }
            Request::BackendSetWeight { service, addr, weight, persist } => {
                changed(self.change(persist, |e| e.set_weight(&service, addr, weight)).await)
            }
            Request::Apply { path, text, persist } => match ServiceFile::parse(&path, &text) {
                Ok(next) => changed(self.commit(next, persist, &text).await),
                Err(err) => Response::Refused(err.to_string()),
            },
        };
        let _ = reply.send(response);
    }

    /// Lists connections on a blocking thread; the loop goes on meanwhile.
    fn spawn_flows(&self, service: Option<String>, reply: oneshot::Sender<Response>) {
        if let Some(name) = &service
            && !self.desired.services.iter().any(|s| &s.name == name)
        {
            let _ = reply.send(Response::Refused(format!("no service named {name:?}")));
            return;
        }
        let names: ServiceNames =
            self.table.services().values().map(|s| (s.id, (s.name.clone(), s.protocol))).collect();
        let pins = self.pins.clone();
        tokio::task::spawn_blocking(move || {
            let response = match conntrack::Tables::open(&pins) {
                Ok(tables) => Response::Flows(conntrack::flows::list(&tables, &names, service.as_deref())),
                Err(err) => Response::Refused(format!("reading the connection table: {err}")),
            };
            let _ = reply.send(response);
        });
    }
}

fn changed(result: Result<Summary, ChangeError>) -> Response {
    match result {
        Ok(summary) => Response::Changed(summary),
        Err(err) => Response::Refused(err.to_string()),
    }
}
