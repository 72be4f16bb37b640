-- Argo CD health check for modelfleet.dev/ModelDeployment.
-- Install: argocd-cm ConfigMap, key `resource.customizations.health.modelfleet.dev_ModelDeployment`,
-- value: this file. Tested by operator/tests/argocd_health.rs.
hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
-- Health `status`, with the condition's "Reason: message".
local function from_condition(status, c)
  hs.status = status
  hs.message = (c.reason or c.type) .. ": " .. (c.message or "")
  return hs
end
local degraded = conditions["Degraded"]
if degraded ~= nil and degraded.status == "True" then
  return from_condition("Degraded", degraded)
end
-- A rollout that waits (spec.rollout.paused, or analysis without an answer) is Suspended.
local paused = conditions["Paused"]
if paused ~= nil and paused.status == "True" then
  return from_condition("Suspended", paused)
end
-- A rollout step in progress (shadow, canary, growing for promotion) is Progressing.
local progressing = conditions["Progressing"]
if progressing ~= nil and progressing.status == "True"
    and (progressing.reason == "RolloutStep" or progressing.reason == "CandidateStarting") then
  return from_condition("Progressing", progressing)
end
local available = conditions["Available"]
if available ~= nil and available.status == "True" then
  if progressing ~= nil and progressing.status == "True" then
    hs.status = "Progressing"
    hs.message = progressing.message or "Rolling out"
    return hs
  end
  hs.status = "Healthy"
  hs.message = available.message or "Available"
  return hs
end
if obj.spec ~= nil and obj.spec.rollout ~= nil and obj.spec.rollout.paused == true then
  hs.status = "Suspended"
  hs.message = "Rollout paused (spec.rollout.paused)"
  return hs
end
hs.status = "Progressing"
if available ~= nil and available.message ~= nil then
  hs.message = available.message
else
  hs.message = "Waiting for replicas"
end
return hs
