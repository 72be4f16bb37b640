//! Writing the status, and publishing Events the core decided.

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::Patch,
    runtime::events::{Event, EventType, Recorder},
};
use modelfleet_crds::{ModelDeployment, ModelDeploymentStatus, ValidationErrors};
use modelfleet_operator_core::{events::EventNote, status::invalid_status};
use serde_json::json;

use crate::{Error, Result, reconcile::apply::apply_params};

/// Writes the status with server-side apply on the status subresource.
pub async fn patch(client: &Client, md: &ModelDeployment, status: &ModelDeploymentStatus) -> Result<()> {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &md.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": ModelDeployment::api_version(&()),
        "kind": ModelDeployment::kind(&()),
        "status": status,
    });
    api.patch_status(&md.name_any(), &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(Error::Status)?;
    Ok(())
}

/// Degraded/InvalidSpec with the validation message; children are left as they are.
pub async fn report_invalid(
    client: &Client,
    recorder: &Recorder,
    md: &ModelDeployment,
    invalid: &ValidationErrors,
) -> Result<()> {
    let (status, event) = invalid_status(md, invalid, Timestamp::now());
    patch(client, md, &status).await?;
    if let Some(event) = event {
        publish(recorder, md, &event).await;
    }
    Ok(())
}

/// Publishes one Event about `md`, its note cut to the API's 1 KiB. Event failures are logged,
/// never fatal.
pub async fn publish(recorder: &Recorder, md: &ModelDeployment, event: &EventNote) {
    let sent = Event {
        type_: if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason.into(),
        note: Some(modelfleet_operator_core::events::truncate(&event.note)),
        action: event.action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&sent, &md.object_ref(&())).await {
        tracing::warn!(error = %e, reason = event.reason, "cannot publish event");
    }
}
