-- Argo CD health check for projectvm.dev ProjectVM and Workspace (the same script serves both).
-- Argo CD runs it with the live object as the global `obj` and reads back {status, message}.
-- Plain Lua 5.1 (Argo CD's gopher-lua); tests/gitops_health.rs runs it with lua5.4.
--   Suspended    Ready's reason is Paused (annotation projectvm.dev/paused=true)
--   Progressing  status.observedGeneration is not metadata.generation yet
--   Degraded     Stalled=True: a terminal reason (RepositoryNotFound, SecretNotFound, ...)
--   Suspended    Ready's reason is Stopped or IdleTimeout: stopped on purpose (runStrategy Halted,
--                idleTimeout, a stop respected under Manual)
--   Healthy      Ready=True, for the current generation
--   Progressing  anything else (message from Reconciling, else Ready)
local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then
      return c
    end
  end
  return nil
end

local stalled, ready, reconciling = condition("Stalled"), condition("Ready"), condition("Reconciling")
if ready ~= nil and ready.reason == "Paused" then
  return { status = "Suspended", message = ready.message or "Paused" }
end

local generation = obj.metadata.generation
local status = obj.status or {}
if status.observedGeneration ~= generation then
  return { status = "Progressing", message = "Waiting for the operator to observe generation " .. tostring(generation) }
end
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = stalled.message or stalled.reason }
end
if ready ~= nil and ready.status ~= "True" and (ready.reason == "Stopped" or ready.reason == "IdleTimeout") then
  return { status = "Suspended", message = ready.message or ready.reason }
end
if ready ~= nil and ready.status == "True" then
  if ready.observedGeneration == nil or ready.observedGeneration == generation then
    return { status = "Healthy", message = ready.message or "Ready" }
  end
  return { status = "Progressing", message = "Waiting for Ready to reflect generation " .. tostring(generation) }
end
if reconciling ~= nil and reconciling.status == "True" and reconciling.message ~= nil and reconciling.message ~= "" then
  return { status = "Progressing", message = reconciling.message }
end
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  return { status = "Progressing", message = ready.message }
end
return { status = "Progressing", message = "Waiting for Ready" }
